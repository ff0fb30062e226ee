"""The audit trail: one structured record per authentication decision, on logger `berth.audit`.

Each record is a single line `audit {...json...}`; App Insights keeps it as a trace, and
`traces | where message startswith "audit " | extend a = parse_json(substring(message, 6))`
makes its fields queryable.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request

log = logging.getLogger("berth.audit")


def client_address(request: Request) -> str:
    """Who is calling: the address the nearest proxy saw (the last X-Forwarded-For entry, which
    the caller cannot forge past a front end that appends it), else the TCP peer."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()[:64]
    return request.client.host if request.client else "unknown"


def audit(event: str, request: Request, **fields: object) -> None:
    record = {"event": event, "address": client_address(request), "method": request.method,
              "path": request.url.path[:200], **fields}
    log.info("audit %s", json.dumps(record, default=str, sort_keys=True))
