"""Provenance of a timeline event: which code wrote it (package version + git commit) and in which Prefect run.

The code version is computed once per process (`code_version`: the installed package's version and, in a git
checkout, HEAD's commit read from the `.git` files, no git process). The run is read from Prefect's context at each
event, without an API call: the flow run id, its flow, its deployment id and version (`FlowRunContext`; a subflow
run inside a deployment run carries the deployment of the run that started it). Outside any run only the code
version is recorded (the CLI, the intake).
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "permit-school-runbook"
_SHA = re.compile(r"[0-9a-f]{40}")
# A deployment's version as its own runs carry it (a subflow run knows the deployment id only): id → version.
_DEPLOYMENT_VERSIONS: dict[str, str] = {}


@functools.cache
def code_version() -> dict[str, str]:
    """Return {"version": the package version, "commit": HEAD's commit when running from a git checkout}."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit = git_commit(Path(__file__).resolve().parent.parent)
    return {"version": version, **({"commit": commit} if commit else {})}


def git_commit(root: Path) -> str | None:
    """Return the commit HEAD names in `root`'s .git (a worktree's too), or None; reads files, runs no git."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = git.read_text(encoding="utf-8").strip()
            if not text.startswith("gitdir:"):
                return None
            git = (root / text[len("gitdir:"):].strip()).resolve()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head if _SHA.fullmatch(head) else None
        ref = head[len("ref:"):].strip()
        for base in (git, common):
            if (base / ref).is_file():
                sha = (base / ref).read_text(encoding="utf-8").strip()
                return sha if _SHA.fullmatch(sha) else None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                sha, _, name = line.partition(" ")
                if name.strip() == ref and _SHA.fullmatch(sha):
                    return sha
    except OSError:
        return None
    return None


def run_context() -> dict[str, str]:
    """Return the Prefect run we are in: flow_run_id, flow, deployment_id, deployment_version (what is known)."""
    try:
        from prefect import context
    except ImportError:  # pragma: no cover - prefect is a dependency
        return {}
    out: dict[str, str] = {}
    ctx = context.FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is not None:
        out["flow_run_id"] = str(run.id)
        if ctx is not None and ctx.flow is not None:
            out["flow"] = ctx.flow.name
    outer = getattr(context, "_deployment_id", None)  # set by the engine for a deployment run and its subflows
    deployment_id = (run.deployment_id if run is not None else None) or (outer.get() if outer is not None else None)
    if deployment_id is not None:
        key = str(deployment_id)
        out["deployment_id"] = key
        if run is not None and run.deployment_id is not None and run.deployment_version:
            _DEPLOYMENT_VERSIONS[key] = run.deployment_version
        if key in _DEPLOYMENT_VERSIONS:
            out["deployment_version"] = _DEPLOYMENT_VERSIONS[key]
    if run is None and (task := context.TaskRunContext.get()) is not None and task.task_run is not None:
        out["task_run_id"] = str(task.task_run.id)  # a background task (the warm path), no flow run
    return out


def current() -> dict[str, Any]:
    """Return the provenance of an event written now: the code version and the Prefect run, if any."""
    return {**code_version(), **run_context()}


def describe(provenance: dict[str, Any]) -> str:
    """Return one line naming the code and the deployment of a provenance (`0.1.0 @ cd02864a1b2c, deployment …`)."""
    if not provenance:
        return "not recorded"
    code = str(provenance.get("version") or "unknown")
    if provenance.get("commit"):
        code += f" @ {str(provenance['commit'])[:12]}"
    if provenance.get("deployment_id"):
        where = f"deployment {provenance.get('flow') or '?'} ({provenance['deployment_id']}"
        where += f", version {provenance['deployment_version']})" if provenance.get("deployment_version") else ")"
    elif provenance.get("flow_run_id") or provenance.get("flow"):
        where = f"flow {provenance.get('flow') or '?'} outside a deployment"
    else:
        where = "outside any Prefect run"
    return f"code {code}, {where}"
