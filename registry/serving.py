"""The HTTP protocol `python -m registry serve` runs: uvicorn's, with bounds on request heads.

uvicorn's httptools protocol accepts a request head of any size, for as long as it takes; one
unauthenticated 256 MiB header held the process at over half a gigabyte. Here:
- a request's head (request line and headers) may take MAX_HEAD_BYTES, give or take one read;
- it must arrive within HEAD_SECONDS of its first byte (or of the connection's opening);
- chunked trailers, which uvicorn would keep as headers without bound, are refused;
- `serve` also caps concurrent connections (MAX_CONNECTIONS; beyond it uvicorn answers 503).
A refusal is a 431 (or 408 for a slow head) and the connection is closed. In Azure the
Functions front end and host bound request heads themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any

MAX_HEAD_BYTES = 64 * 1024
HEAD_SECONDS = 30
MAX_CONNECTIONS = 4096


def _refusal(status: bytes, reason: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(reason), reason))


TOO_LARGE = _refusal(b"431 Request Header Fields Too Large", b"request head too large\n")
TOO_SLOW = _refusal(b"408 Request Timeout", b"request head not received in time\n")


def head_limited_protocol() -> Any:
    """A protocol class for uvicorn's `http` setting (or "h11" where httptools is missing,
    which `serve` then bounds with h11_max_incomplete_event_size)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class HeadLimitedProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._in_head = True
            self._in_message = False
            self._refused: bytes | None = None
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes, self._in_head, self._in_message = 0, True, True
            self._start_head_timer()

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._in_head:  # a trailer after a chunked body
                self._refused = TOO_LARGE
                return
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._stop_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_message = False
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._refused = TOO_LARGE
            if self._refused is not None:
                self._refuse(self._refused)

        def _start_head_timer(self) -> None:
            self._stop_head_timer()
            self._head_timer = asyncio.get_running_loop().call_later(HEAD_SECONDS, self._head_overdue)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            # Between requests an idle connection is uvicorn's keep-alive timeout's business;
            # here: a head was started, or nothing came at all since the connection opened.
            if self._in_head and (self._in_message or self.cycle is None):
                self._refuse(TOO_SLOW)

        def _refuse(self, answer: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeadLimitedProtocol
