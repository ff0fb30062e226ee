"""The HTTP protocol `python -m registry serve` runs: uvicorn's, with a cap on the request head.

uvicorn's httptools protocol accepts a request head of any size; one unauthenticated 256 MiB
header held the process at over half a gigabyte. Each request's head (request line and
headers) may take MAX_HEAD_BYTES, give or take one read; a longer one is answered 431 and the
connection closed. In Azure the Functions front end and host limit request heads themselves.
"""

from __future__ import annotations

from typing import Any

MAX_HEAD_BYTES = 64 * 1024
_REFUSAL = b"request head too large\n"


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

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes, self._in_head = 0, True

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                     % (len(_REFUSAL), _REFUSAL))
                self.transport.close()

    return HeadLimitedProtocol
