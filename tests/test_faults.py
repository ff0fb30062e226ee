"""The storage-fault proxy itself, against a plain echo server: each mode does what it says,
switches apply to connections already open, and stop leaves nothing behind."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from registry.azurite import free_port
from tests.faults import FaultProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = EchoServer(("127.0.0.1", free_port()), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port, delay=0.5) as started:
        yield started


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def echoes(sock: socket.socket, data: bytes, timeout: float = 5) -> bool:
    """Whether `data` comes back within `timeout`; False on silence (the socket stays usable)."""
    sock.settimeout(timeout)
    sock.sendall(data)
    received = b""
    try:
        while len(received) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            received += chunk
    except TimeoutError:
        return False
    return received == data


def is_reset(sock: socket.socket) -> bool:
    """A reset shows as ECONNRESET (or, once the RST is already in, an end of stream)."""
    sock.settimeout(5)
    try:
        sock.sendall(b"anyone?")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def new_connection_is_reset(proxy: FaultProxy) -> bool:
    try:
        sock = connect(proxy)
    except ConnectionResetError:  # on loopback the RST can beat connect() itself
        return True
    with sock:
        return is_reset(sock)


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert echoes(sock, b"hello" * 10_000)


def test_stall_holds_existing_and_new_connections_until_pass(proxy: FaultProxy) -> None:
    with connect(proxy) as before:
        assert echoes(before, b"one")
        proxy.set_mode("stall")
        assert not echoes(before, b"two", timeout=0.5)
        with connect(proxy) as during:  # accepted, then held
            assert not echoes(during, b"three", timeout=0.5)
            proxy.set_mode("pass")
            # Nothing was lost: what was held is forwarded now.
            before.settimeout(5)
            assert before.recv(3) == b"two"
            during.settimeout(5)
            assert during.recv(5) == b"three"


def test_cut_resets_existing_and_new_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as before:
        assert echoes(before, b"one")
        proxy.set_mode("cut")
        assert is_reset(before)
        assert new_connection_is_reset(proxy)
    proxy.set_mode("pass")
    with connect(proxy) as after:
        assert echoes(after, b"back")


def test_cut_ends_a_stall(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.set_mode("stall")
        assert not echoes(sock, b"held", timeout=0.3)
        proxy.set_mode("cut")
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def test_slow_delays_each_chunk(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert echoes(sock, b"warm")
        proxy.set_mode("slow")
        began = time.monotonic()
        assert echoes(sock, b"ping")
        assert time.monotonic() - began >= 0.9  # 0.5 s each way
        proxy.set_mode("pass")
        began = time.monotonic()
        assert echoes(sock, b"pong")
        assert time.monotonic() - began < 0.5  # generous: the machine may be busy


def test_stop_closes_the_port_and_the_thread(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    sock = connect(proxy)
    assert echoes(sock, b"x")
    proxy.set_mode("stall")
    proxy.stop()
    assert is_reset(sock)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    assert not any(thread.name == "fault-proxy" and thread.is_alive() for thread in threading.enumerate())


def test_unknown_mode_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.set_mode("drop")  # type: ignore[arg-type]
