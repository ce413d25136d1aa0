"""Supabase: the Management API health call as the CLI's OpenAPI document describes it; migration files and project
refs as the CLI knows them."""

from __future__ import annotations

import re

import pytest

from runbook.clients._http import RetryPolicy
from runbook.clients.supabase import MIGRATION_FILE, PROJECT_REF, SupabaseDatabase, SupabaseManagement
from runbook.drill import DrillStack
from runbook.drill.database import MIGRATION_FILE as DRILL_MIGRATION_FILE
from runbook.drill.faults import Fault
from runbook.errors import InputError, RateLimited
from tests.contracts.contract import Recorder, Spec, assert_conforms

VENDOR = "supabase"
CLI_MIGRATION = re.compile(r"^([0-9]+)_(.*)\.sql$")  # supabase/cli apps/cli-go/pkg/migration/file.go


async def test_project_health_conforms(drill: DrillStack, recorder: Recorder, fast: RetryPolicy) -> None:
    """The health call, a 429 before it and a 401 are documented (or allow-listed) exchanges."""
    settings = drill.settings()
    drill.supabase_api.inject(Fault.rate_limit(retry_after=0, times=1))
    async with SupabaseManagement.from_settings(settings, policy=fast) as api:
        recorder.watch(api.http)
        health = await api.project_health(("auth", "db", "rest"))
    bad = settings.model_copy(update={"supabase_access_token": settings.supabase_access_token.__class__("sbp_0")})
    async with SupabaseManagement.from_settings(bad, policy=fast) as api:
        recorder.watch(api.http)
        with pytest.raises(Exception):  # noqa: B017 - the 401 exchange itself is what is checked
            await api.project_health(("db",))
    assert health.healthy and [e.status for e in recorder.exchanges] == [429, 200, 401]
    assert_conforms(VENDOR, recorder.exchanges)


def test_the_drill_project_ref_is_twenty_lowercase_letters(drill: DrillStack) -> None:
    """The stand-in's project ref fits the document's `ref` pattern and the CLI's ProjectRefPattern."""
    param = next(p for p in Spec.load(VENDOR).doc["paths"]["/v1/projects/{ref}/health"]["get"]["parameters"]
                 if p["name"] == "ref")
    assert PROJECT_REF.match(drill.project.ref)
    assert re.fullmatch(param["schema"]["pattern"], drill.project.ref) and len(drill.project.ref) == 20


async def test_a_malformed_project_ref_is_refused_before_any_call(drill: DrillStack) -> None:
    """A ref that is not 20 lowercase letters is an InputError, and nothing is sent."""
    settings = drill.settings(supabase_project_ref="drill0123456789abcdef")
    async with SupabaseManagement.from_settings(settings) as api:
        with pytest.raises(InputError, match="20 lowercase letters"):
            await api.project_health()
    assert drill.supabase_api.requests == []


@pytest.mark.parametrize("name", [
    "20250127093000_add_profiles.sql", "1_init.sql", "20250127093000_with spaces & symbols (v2).sql",
    "20250127093000_dotted.name.sql", "202501270930001234_long_version.sql", "20250127093000_.sql",
    "init.sql", "20250127093000-add.sql", "v20250127093000_x.sql", "20250127093000_x.SQL", "20250127093000_x.sql.bak",
])
def test_migration_files_match_like_the_cli(name: str) -> None:
    """Our client and the drill's database match exactly the file names the Supabase CLI matches, same parts."""
    cli = CLI_MIGRATION.match(name)
    for ours in (MIGRATION_FILE.match(name), DRILL_MIGRATION_FILE.match(name)):
        assert (ours is None) == (cli is None)
        if cli is not None and ours is not None:
            assert (ours["version"], ours["name"]) == cli.groups()


async def test_unusual_migration_names_are_listed(drill: DrillStack) -> None:
    """A file the CLI accepts (any name after the version) is a local migration, like `supabase migration list`."""
    (drill.migrations_dir / "29991231000000_add index (concurrently).sql").write_text("select 1;\n")
    async with SupabaseDatabase.from_settings(drill.settings()) as db:
        status = await db.migration_status()
    assert "29991231000000" in status.pending
    assert next(r for r in status.rows if r.version == "29991231000000").name == "add index (concurrently)"


async def test_throttled_health_is_rate_limited(drill: DrillStack, fast: RetryPolicy) -> None:
    """The documented 429 is a RateLimited error once retries are spent."""
    drill.supabase_api.inject(Fault.rate_limit(retry_after=0, times=None))
    async with SupabaseManagement.from_settings(drill.settings(), policy=fast.with_(max_attempts=2)) as api:
        with pytest.raises(RateLimited):
            await api.project_health(("db",))


async def test_past_the_documented_limit_health_waits_for_x_ratelimit_reset(drill: DrillStack,
                                                                            recorder: Recorder) -> None:
    """The Management API's own limit (a fixed minute per token, project and endpoint; X-RateLimit-* on every
    answer, no Retry-After): the third call of a 2-a-minute window is 429, waited until X-RateLimit-Reset (5 s, the
    window's end on the stand-in's clock), then answered in the next window."""
    now = [1015.0]  # 5 s before the window [960, 1020) ends
    drill.supabase_api.rate_limit, drill.supabase_api.rate_clock = 2, lambda: now[0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async with SupabaseManagement.from_settings(drill.settings(), sleep=sleep) as api:
        recorder.watch(api.http)
        for _ in range(3):
            assert (await api.project_health(("db",))).healthy
    assert [e.status for e in recorder.exchanges] == [200, 200, 429, 200] and waits == [5.0]
    headers = [e.response_headers for e in recorder.exchanges]
    assert [h["x-ratelimit-remaining"] for h in headers] == ["1", "0", "0", "1"]
    assert all("retry-after" not in h for h in headers) and headers[2]["x-ratelimit-reset"] == "5"
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_reset_far_away_gives_up_the_read_at_once(drill: DrillStack, recorder: Recorder) -> None:
    """A 429 whose X-RateLimit-Reset is 45 s away (past a read's 30 s bound): no wait, RateLimited as a read, with
    the Management API's message; a monitor records the gap and reads again next cycle."""
    drill.supabase_api.inject(Fault.rate_limit(retry_after=45, times=None))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with SupabaseManagement.from_settings(drill.settings(), sleep=sleep) as api:
        recorder.watch(api.http)
        with pytest.raises(RateLimited) as caught:
            await api.project_health(("db",))
    assert waits == [] and len(recorder.exchanges) == 1 and caught.value.use == "read"
    assert caught.value.retry_after == 45 and "Too many requests" in str(caught.value)
    assert_conforms(VENDOR, recorder.exchanges)
