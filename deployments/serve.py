"""Serve every deployment of prefect.yaml from one process, schedules active; prefect.yaml stays the only list.

    python -m deployments.serve [--file prefect.yaml] [--limit N]     (`runbook up` does this plus a server and drill)

`load_deployments()` reads prefect.yaml, imports each entrypoint as a module (`flows/x.py:fn` → `flows.x.fn`) and
builds `flow.to_deployment(...)` with the file's name, parameters, tags, description, schedules, concurrency limit,
paused flag and `enforce_parameter_schema`. Work pool, pull steps and job variables are for `prefect deploy` and a
worker; a served deployment needs none. Tests, `runbook up` and the drill reuse `load_deployments()`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from runbook.errors import ConfigError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import RunnerDeployment
    from prefect.runner import Runner
    from prefect.schedules import Schedule

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_FILE = "prefect.yaml"
SCHEDULE_KINDS = ("cron", "interval", "rrule")
SCHEDULE_KEYS = {*SCHEDULE_KINDS, "timezone", "anchor_date", "active", "parameters", "slug", "day_or"}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of prefect.yaml, as written there."""

    name: str
    entrypoint: str
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | dict[str, Any] | None = None
    paused: bool = False
    enforce_parameter_schema: bool = True
    work_pool: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        """Return the importable module of the entrypoint (`flows/x.py` → `flows.x`)."""
        path = self.entrypoint.rsplit(":", 1)[0]
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        """Return the flow function's name in its module."""
        return self.entrypoint.rsplit(":", 1)[1]


def resolve_file(path: str | Path = DEFAULT_FILE) -> Path:
    """Return the prefect.yaml to read: as given, else relative to the project directory."""
    given = Path(path)
    if given.is_file():
        return given.resolve()
    fallback = PROJECT_DIR / given
    if not given.is_absolute() and fallback.is_file():
        return fallback
    raise ConfigError(f"no deployments file at {given}")


def read_specs(path: str | Path = DEFAULT_FILE) -> list[DeploymentSpec]:
    """Read the deployments of prefect.yaml; ConfigError names a malformed entry."""
    file = resolve_file(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    specs = []
    for i, raw in enumerate(data.get("deployments") or []):
        name = raw.get("name") or f"#{i}"
        entrypoint = raw.get("entrypoint") or ""
        if ":" not in entrypoint or not entrypoint.split(":", 1)[0].endswith(".py"):
            raise ConfigError(f"{file}: deployment {name}: entrypoint must look like flows/<module>.py:<function>")
        specs.append(DeploymentSpec(
            name=name, entrypoint=entrypoint, description=raw.get("description"), tags=list(raw.get("tags") or []),
            parameters=dict(raw.get("parameters") or {}), schedules=list(raw.get("schedules") or []),
            concurrency_limit=raw.get("concurrency_limit"), paused=bool(raw.get("paused", False)),
            enforce_parameter_schema=bool(raw.get("enforce_parameter_schema", True)),
            work_pool=dict(raw.get("work_pool") or {}),
        ))
    return specs


def load_flow(spec: DeploymentSpec) -> Flow[Any, Any]:
    """Import a deployment's flow by module (so parameter models are the same classes everywhere)."""
    from prefect import Flow

    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    module = importlib.import_module(spec.module)
    obj = getattr(module, spec.function, None)
    if not isinstance(obj, Flow):
        raise ConfigError(f"deployment {spec.name}: {spec.entrypoint} is not a Prefect flow")
    return obj


def build_schedule(config: dict[str, Any], where: str = "schedule") -> Schedule:
    """Return the Prefect schedule of one `schedules:` entry (exactly one of cron | interval | rrule)."""
    from prefect.schedules import Schedule

    kinds = [k for k in SCHEDULE_KINDS if config.get(k) is not None]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of cron | interval | rrule (got {kinds or 'none'})")
    unknown = set(config) - SCHEDULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {k: config[k] for k in ("timezone", "slug", "day_or") if config.get(k) is not None}
    kwargs["active"] = bool(config.get("active", True))
    kwargs["parameters"] = dict(config.get("parameters") or {})
    if config.get("anchor_date"):
        kwargs["anchor_date"] = datetime.fromisoformat(str(config["anchor_date"]))
    value = config[kinds[0]]
    if kinds[0] == "interval":
        value = timedelta(seconds=value) if isinstance(value, int | float) else value
        if not isinstance(value, timedelta) or value <= timedelta(0):
            raise ConfigError(f"{where}: interval must be a positive number of seconds")
    try:
        return Schedule(**{kinds[0]: value}, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_concurrency(value: int | dict[str, Any] | None) -> int | ConcurrencyLimitConfig | None:
    """Return the concurrency limit of a deployment (an int, or limit + collision_strategy)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    if value is None or isinstance(value, int):
        return value
    return ConcurrencyLimitConfig.model_validate(value)


def to_runner_deployment(spec: DeploymentSpec, *, schedules: bool = True) -> RunnerDeployment:
    """Build the served deployment of one prefect.yaml entry."""
    flow = load_flow(spec)
    if flow.name != spec.name:
        raise ConfigError(f"deployment {spec.name} serves flow {flow.name!r}: name them the same")
    built = [build_schedule(s, f"deployment {spec.name} schedule {i}") for i, s in enumerate(spec.schedules)]
    # _sync: Prefect's async dispatch would hand back a coroutine when called inside a running event loop.
    return flow.to_deployment(  # type: ignore[call-arg,return-value]
        _sync=True,
        name=spec.name,
        parameters=spec.parameters,
        tags=spec.tags,
        description=spec.description,
        schedules=built if schedules else [],
        concurrency_limit=build_concurrency(spec.concurrency_limit),
        paused=spec.paused,
        enforce_parameter_schema=spec.enforce_parameter_schema,
    )


def load_deployments(path: str | Path = DEFAULT_FILE, *, names: Sequence[str] | None = None,
                     schedules: bool = True) -> list[RunnerDeployment]:
    """Return the deployments of prefect.yaml (all, or those named) to serve or `.apply()`; callable from async code."""
    specs = read_specs(path)
    if names is not None:
        unknown = set(names) - {s.name for s in specs}
        if unknown:
            raise ConfigError(f"not in prefect.yaml: {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s.name in names]
    return [to_runner_deployment(s, schedules=schedules) for s in specs]


async def build_runner(path: str | Path = DEFAULT_FILE, *, limit: int | None = None, query_seconds: float | None = None,
                       names: Sequence[str] | None = None, name: str = "runbook") -> Runner:
    """Return a Runner with every deployment of prefect.yaml added (started by the caller)."""
    from prefect.runner import Runner

    runner = Runner(name=name, limit=limit, query_seconds=query_seconds, pause_on_shutdown=True)
    for deployment in load_deployments(path, names=names):
        await runner.aadd_deployment(deployment)
    return runner


async def aserve_all(path: str | Path = DEFAULT_FILE, *, limit: int | None = None,
                     query_seconds: float | None = None) -> None:
    """Serve every deployment of prefect.yaml until cancelled."""
    runner = await build_runner(path, limit=limit, query_seconds=query_seconds)
    await runner.start()


def serve_all(path: str | Path = DEFAULT_FILE, *, limit: int | None = None, query_seconds: float | None = None) -> None:
    """Serve every deployment of prefect.yaml from this process until interrupted (Ctrl-C)."""
    try:
        asyncio.run(aserve_all(path, limit=limit, query_seconds=query_seconds))
    except KeyboardInterrupt:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: serve every deployment of a prefect.yaml."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=DEFAULT_FILE, help="the deployments file (default: prefect.yaml)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many runs at a time")
    parser.add_argument("--query-seconds", type=float, default=None, help="how often to poll for due runs")
    args = parser.parse_args(argv)
    try:
        deployments = load_deployments(args.file)
    except ConfigError as exc:
        print(f"deployments: {exc}", file=sys.stderr)
        return 2
    print(f"serving {len(deployments)} deployments: {', '.join(d.name for d in deployments)}")
    serve_all(args.file, limit=args.limit, query_seconds=args.query_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
