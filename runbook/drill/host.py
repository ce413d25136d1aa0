"""One background thread with one asyncio loop that serves every stand-in with uvicorn on 127.0.0.1.

The host binds each listening socket itself (port 0 = a free port), so ports are known before serving and never
race. `refuse()` closes a stand-in's socket (connections are refused); `accept()` listens on the same port again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn

from runbook.drill.standin import StandIn
from runbook.errors import DrillError

T = TypeVar("T")

_log = logging.getLogger(__name__)


def bind_socket(port: int = 0) -> socket.socket:
    """Return a listening TCP socket on 127.0.0.1 (port 0 = any free port).

    Created with proto IPPROTO_TCP, and TCP_NODELAY set (accepted connections inherit it): asyncio disables Nagle's
    algorithm only on sockets whose proto is IPPROTO_TCP, and with proto 0 every answer (uvicorn writes the headers
    and the body apart) waited for the client's delayed ACK: 44 ms a request instead of about 1 ms.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ServerHost:
    """Own the loop thread and the uvicorn servers of the stand-ins."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: dict[int, tuple[uvicorn.Server, asyncio.Task[None]]] = {}
        self._standins: list[StandIn] = []

    # -- loop -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="drill-host", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise DrillError("the drill server thread did not start")

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run a coroutine on the host loop from another thread and return its result."""
        if self.loop is None:
            coro.close()
            raise DrillError("the drill host is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call_soon(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
        """Schedule a coroutine on the host loop without waiting for it."""
        if self.loop is None:
            coro.close()
            return None
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop), loop=self.loop)

    # -- servers ----------------------------------------------------------------------------------------------
    def serve(self, standins: list[StandIn]) -> None:
        """Serve each stand-in on its own free port (sets `.port` and `.host`)."""
        sockets = []
        for standin in standins:
            sock = bind_socket(standin.port)
            standin.port = sock.getsockname()[1]
            standin.host = self
            sockets.append((standin, sock))
            self._standins.append(standin)
        self.run(asyncio.wait_for(self._start_all(sockets), 20))

    async def _start_all(self, pairs: list[tuple[StandIn, socket.socket]]) -> None:
        await asyncio.gather(*(self._start(standin, sock) for standin, sock in pairs))

    async def _start(self, standin: StandIn, sock: socket.socket) -> None:
        config = uvicorn.Config(
            standin,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=5,
        )
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise DrillError(f"{standin.name} did not start")
            await asyncio.sleep(0.01)
        self._servers[id(standin)] = (server, task)

    async def _stop(self, standin: StandIn) -> None:
        entry = self._servers.pop(id(standin), None)
        if entry is None:
            return
        server, task = entry
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except (TimeoutError, asyncio.CancelledError):
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def refuse(self, standin: StandIn) -> None:
        """Stop listening for a stand-in: new connections are refused until `accept()`."""
        if standin.refusing:
            return
        standin.refusing = True
        self.run(self._stop(standin))

    def accept(self, standin: StandIn) -> None:
        """Listen again on the stand-in's port after `refuse()`."""
        if not standin.refusing:
            return
        sock = bind_socket(standin.port)
        self.run(self._start(standin, sock))
        standin.refusing = False

    def stop(self) -> None:
        """Stop every server, then the loop and its thread."""
        if self.loop is None:
            return
        for standin in self._standins:
            standin.release_all()
        try:
            self.run(self._stop_all(), timeout=15)
        except Exception as exc:  # keep shutting down; report once
            _log.warning("drill: stopping servers failed: %s", exc)
        loop = self.loop
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self.loop = None

    async def _stop_all(self) -> None:
        await asyncio.gather(*(self._stop(s) for s in self._standins), return_exceptions=True)
        # give the other tasks (deliveries, builds) a moment, then cancel what is left
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
