"""The drill host's listening sockets: the stand-ins answer without waiting for the client's delayed ACK."""

from __future__ import annotations

import socket

from runbook.drill.host import bind_socket


def test_accepted_connections_have_nagle_off() -> None:
    """A connection accepted on a stand-in's socket has TCP_NODELAY (asyncio sets it only when proto is TCP; without
    it each answer of uvicorn, headers and body written apart, waited 40 ms for the client's delayed ACK)."""
    listening = bind_socket()
    try:
        assert listening.proto == socket.IPPROTO_TCP
        listening.setblocking(True)
        with socket.create_connection(listening.getsockname(), timeout=5):
            accepted, _ = listening.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listening.close()
