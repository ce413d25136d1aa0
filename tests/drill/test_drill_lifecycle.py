"""Starting and stopping: nothing is left behind (processes, ports, temp dirs), also via the CLI and signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from runbook.drill import DrillStack


def _gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _drill_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("drill-"))


def _processes_using(path: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(str(path) in part for part in proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found


def test_ten_starts_and_stops_leave_nothing_behind() -> None:
    """Ten start/stop cycles leave no postmaster, open port, thread or work directory."""
    threads_before = _drill_threads()
    for _ in range(10):
        with DrillStack(users=50) as stack:
            workdir, pid = stack.workdir, stack.db.pid
            ports = [s.port for s in stack.standins]
            assert stack.health()[0] == 200
        assert not workdir.exists()
        assert pid is not None and _gone(pid)
        assert all(_refused(port) for port in ports)
        assert _processes_using(workdir) == []
    deadline = time.monotonic() + 60
    while _drill_threads() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _drill_threads() == threads_before


def test_an_exception_inside_the_block_still_cleans_up() -> None:
    """Leaving the with-block by an exception stops everything and removes the work directory."""
    with pytest.raises(RuntimeError), DrillStack(users=20) as stack:
        workdir, pid = stack.workdir, stack.db.pid
        raise RuntimeError("boom")
    assert not workdir.exists() and _gone(pid)


def test_given_workdir_is_kept_but_postgres_data_removed(tmp_path: Path) -> None:
    """With an explicit workdir the state and migrations stay; the database files and server go."""
    with DrillStack(tmp_path / "drill", users=20) as stack:
        pid = stack.db.pid
    assert (tmp_path / "drill" / "supabase" / "migrations").is_dir()
    assert not (tmp_path / "drill" / "pg").exists() and _gone(pid)


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    proc = subprocess.Popen([sys.executable, "-m", "runbook.drill.cli", "stack", "up", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_stack_up_prints_json_then_stops_on_signal(sig: signal.Signals) -> None:
    """`stack up --json` prints {urls, env} first, serves, and on SIGINT/SIGTERM exits 0 leaving nothing."""
    import httpx

    proc, info = _start_cli("--scenario", "bad-deploy")
    try:
        workdir = Path(info["workdir"])
        pid = int((workdir / "pg" / "postmaster.pid").read_text().split()[0])
        assert set(info) >= {"urls", "env"} and info["env"]["RUNBOOK_DRILL"] == "true"
        assert httpx.get(f"{info['urls']['app']}/api/health", timeout=10).status_code == 503
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not workdir.exists() and _gone(pid)
    assert all(_refused(int(url.rsplit(":", 1)[1])) for url in info["urls"].values())


def test_a_failed_start_raises_drill_error_and_leaves_no_thread(tmp_path: Path) -> None:
    """A stack that cannot start raises DrillError and leaves no server thread behind."""
    from runbook.errors import DrillError

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    threads_before = _drill_threads()
    with pytest.raises(DrillError):
        DrillStack(blocker).start()
    assert _drill_threads() == threads_before


def test_stop_is_idempotent() -> None:
    """Calling stop() twice (and after the with-block) is harmless."""
    stack = DrillStack(users=20).start()
    stack.stop()
    stack.stop()
    assert not stack.workdir.exists()
