"""HTTP helpers shared by the handlers: error bodies, pagination, bounded bodies, ranges."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from registry.auth.service import TokenService
from registry.oci.errors import (
    PAGINATION_NUMBER_INVALID,
    PAYLOAD_TOO_LARGE,
    RANGE_INVALID,
    SIZE_INVALID,
    RegistryError,
)
from registry.ops.pullthrough import PullThrough
from registry.settings import Settings
from registry.storage.access_store import AccessStore
from registry.storage.registry_store import RegistryStore

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


@dataclass(frozen=True)
class Context:
    """What every handler may use: the model layer and the settings."""

    store: RegistryStore
    settings: Settings
    access: AccessStore
    tokens: TokenService | None = None  # None when BERTH_AUTH=none
    pullthrough: PullThrough | None = None  # the pull-through cache (None: never fetches upstream)


def error_response(error: RegistryError, head: bool = False) -> Response:
    body = b"" if head else json.dumps(error.body()).encode()
    return Response(body, status_code=error.status, headers=error.headers, media_type="application/json")


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None,
                  media_type: str = "application/json") -> Response:
    return Response(json.dumps(document).encode(), status_code=status, headers=headers, media_type=media_type)


def empty_response(status: int, headers: dict[str, str]) -> Response:
    return Response(b"", status_code=status, headers={**headers, "Content-Length": "0"})


def page_request(request: Request, settings: Settings) -> tuple[int, str | None]:
    """The `n` and `last` of a list request; `n` is clamped to the configured maximum."""
    raw = request.query_params.get("n")
    limit = settings.max_page_size
    if raw is not None and raw != "":
        if not (raw.isascii() and raw.isdigit()):
            raise RegistryError(PAGINATION_NUMBER_INVALID, f"n must be a non-negative integer, got {raw[:20]!r}")
        limit = settings.max_page_size if len(raw) > 18 else min(int(raw), settings.max_page_size)
    return limit, request.query_params.get("last") or None


def next_link(path: str, limit: int, last: str, **query: str) -> dict[str, str]:
    """The RFC 5988 link to the next page; `query` carries the request's filters on."""
    return {"Link": f'<{path}?{urlencode({"n": limit, "last": last, **query})}>; rel="next"'}


def declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not is_decimal(raw):
        raise RegistryError(SIZE_INVALID, f"invalid Content-Length {raw[:20]!r}")
    return int(raw)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refusing (413) anything larger than limit."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise RegistryError(PAYLOAD_TOO_LARGE, f"body of {length} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RegistryError(PAYLOAD_TOO_LARGE, f"body exceeds the limit of {limit} bytes")
    if length is not None and len(body) != length:
        raise RegistryError(SIZE_INVALID, f"Content-Length says {length} bytes, body has {len(body)}")
    return bytes(body)


# At most 18 digits: int() refuses more than 4300, and no blob or page is larger anyway. A
# longer Range number makes a header Berth does not understand (ignored, as RFC 9110 allows).
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
_DIGITS = re.compile(r"[0-9]{1,18}")  # str.isdigit() also takes "²", which int() refuses


def is_decimal(text: str) -> bool:
    return _DIGITS.fullmatch(text) is not None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range, None to send everything.

    Raises RegistryError 416 when the range lies wholly outside the blob.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None  # RFC 9110: ignore a Range header we do not understand (or several ranges)
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    else:
        suffix = int(last)
        if suffix == 0:
            start, end = size, size - 1
        else:
            start, end = max(size - suffix, 0), size - 1
    if start >= size:
        raise RegistryError(
            RANGE_INVALID, f"range {header} is outside the blob of {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def storage_serves_range(header: str | None, size: int) -> bool:
    """Whether Blob Storage answers this Range as RFC 9110 says, so a redirect may carry it.

    Azure Storage documents `bytes=first-` and `bytes=first-last` only; suffix ranges (Azurite
    answers them with `Content-Length: NaN`), several ranges, unsatisfiable ranges and headers
    it may not ignore the way RFC 9110 asks are served by Berth itself.
    """
    if not header:
        return True
    match = _RANGE.fullmatch(header.strip())
    if not match or not match.group(1):
        return False
    start = int(match.group(1))
    return start < size and (not match.group(2) or int(match.group(2)) >= start)
