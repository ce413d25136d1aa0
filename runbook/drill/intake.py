"""The drill's alert intake: our own intake app (runbook.intake), served beside the stand-ins on the drill's host.

It is not a stand-in of a vendor: it is the real intake, served like a stand-in so that the drill records what it
received and can make it fail (a 503 fault, or connections refused) the way an endpoint goes down. PagerDuty's
stand-in delivers its V3 webhooks here (`POST /pagerduty/webhooks`), so every drill's acknowledgement goes
PagerDuty app → webhook → intake → incident store → the escalation stops.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

from runbook.drill.standin import StandIn
from runbook.settings import Settings


class IntakeServer(StandIn):
    """The intake app on its own 127.0.0.1 port; `configure(settings)` builds it once the stack's env is known."""

    name = "intake"

    def routes(self) -> list[BaseRoute]:
        """Return no routes until configured."""
        return []

    def configure(self, settings: Settings) -> None:
        """Serve runbook.intake's app for these settings (its secrets; the store is read per request)."""
        from runbook.intake.app import create_app

        self._app = create_app(settings)

    def error_body(self, status: int, message: str) -> Any:
        """Return the intake's rejection shape."""
        return {"status": "rejected", "error": message}

    @property
    def webhook_url(self) -> str:
        """Return the PagerDuty webhook subscription's URL."""
        return f"{self.base_url}/pagerduty/webhooks"
