"""One structured line per request: what an operator greps for (or queries in Application
Insights, `traces | extend r = parse_json(message)`) when a user reports a failed push.

Every answer carries `X-Request-Id`; the same id is in the line, in the events a write
sends, and in the log of an unhandled error, so a user's report leads to all of them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response

from registry.auth import Grant
from registry.auth.audit import client_address
from registry.settings import Settings

log = logging.getLogger("berth.request")

REQUEST_ID_HEADER = "X-Request-Id"


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestLog:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._level = settings.request_log

    def wanted(self, request: Request, status: int) -> bool:
        if self._level == "off":
            return False
        if self._level == "all":
            return True
        # Not errors: the challenge every client starts with, and HEAD probes of what is not there
        # yet (a push asks for each blob before uploading it).
        error = status >= 500 or (status >= 400 and not (
            (status == 401 and "authorization" not in request.headers)
            or (status == 404 and request.method == "HEAD")))
        return error or (self._level == "changes" and request.method not in ("GET", "HEAD"))

    def record(self, request: Request, response: Response, request_id: str, started: float,
               error_code: str | None) -> None:
        """Logs the request if the level wants it. The time is to the answer's head: a streamed
        body (a layer download in proxy mode) goes on after it."""
        status = response.status_code
        if not self.wanted(request, status):
            return
        grant: Grant | None = getattr(request.state, "grant", None)
        line = {
            "requestId": request_id,
            "method": request.method,
            "path": request.scope["path"][:300],
            "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "client": client_address(request, self._settings),
            "subject": grant.subject if grant is not None else "",
            "userAgent": request.headers.get("user-agent", "")[:200],
        }
        if error_code:
            line["error"] = error_code
        length = response.headers.get("content-length")
        if length is not None and length.isdigit():
            line["bytes"] = int(length)
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s",
                json.dumps(line, separators=(",", ":"), ensure_ascii=True))
