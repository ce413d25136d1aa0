"""The runbook's own review (monthly): remind its owner in #operations once the next review date has passed."""


from datetime import date
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from runbook.models import utcnow
from runbook.policy import get_policy
from tasks.slack import SlackResult, post_slack_message


class RunbookReviewReminderParams(BaseModel):
    """Parameters of the runbook review reminder."""

    as_of: date | None = Field(None, description="Check as of this date (default: today, UTC)")


class ReviewReminderOutcome(BaseModel):
    """Whether a reminder went out."""

    outcome: Literal["reminded", "nothing-to-do"]
    next_review: date
    owner: str
    message: str
    slack: SlackResult | None = None


@flow(name="runbook-review-reminder", description="Remind the runbook's owner when its review date has passed.")
async def runbook_review_reminder(
    params: RunbookReviewReminderParams = RunbookReviewReminderParams(),
) -> ReviewReminderOutcome:
    """Remind the runbook owner in #operations when the next review date has passed; else nothing to do."""
    logger = get_run_logger()
    review = get_policy().review
    today = params.as_of or utcnow().date()
    if review.next_review > today:
        message = f"Nothing to do: the runbook's next review is on {review.next_review.isoformat()}"
        logger.info(message)
        return ReviewReminderOutcome(outcome="nothing-to-do", next_review=review.next_review, owner=review.owner,
                                     message=message)
    late = (today - review.next_review).days
    message = (
        f"Runbook review due: the incident-response runbook (owner: {review.owner}) was due for review on "
        f"{review.next_review.isoformat()} ({late} day(s) ago; last reviewed {review.last_reviewed.isoformat()}, "
        f"every {review.cadence_days} days). Please review it and update last_reviewed / next_review."
    )
    result = await post_slack_message("operations", message)
    logger.info("Reminded %s: review was due on %s", review.owner, review.next_review)
    return ReviewReminderOutcome(outcome="reminded", next_review=review.next_review, owner=review.owner,
                                 message=message, slack=result)
