"""The audit trail: one structured record per authentication decision, on logger `berth.audit`.

Each record is a single line `audit {...json...}` with `event` and `principal` (or the `name`
tried) first and lists cut short, so it stays far below App Insights' 32 KiB message limit;
`traces | where message startswith "audit " | extend a = parse_json(substring(message, 6))`
makes its fields queryable.
"""

from __future__ import annotations

import ipaddress
import json
import logging

from starlette.requests import Request

from registry.settings import Settings

log = logging.getLogger("berth.audit")
MAX_LISTED = 20  # scopes listed per record; the rest are counted
MAX_TEXT = 200


def client_address(request: Request, settings: Settings) -> str:
    """Who is calling. With BERTH_TRUSTED_PROXY_HOPS=N, the address the Nth proxy from us saw
    (X-Forwarded-For, every header line joined, counted from the right: entries further left
    are the caller's to write); otherwise the TCP peer. Ports are dropped and IPv6 addresses
    grouped by /64, as one host usually holds a whole /64."""
    entries: list[str] = []
    if settings.trusted_proxy_hops:
        for line in request.headers.getlist("x-forwarded-for"):
            entries += [item.strip() for item in line.split(",") if item.strip()]
    if len(entries) >= settings.trusted_proxy_hops > 0:
        raw = entries[-settings.trusted_proxy_hops]
    else:
        raw = request.client.host if request.client else "unknown"
    return _host(raw)


def _host(raw: str) -> str:
    text = raw.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def audit(event: str, request: Request, settings: Settings, **fields: object) -> None:
    record: dict[str, object] = {"event": event}
    for key in ("principal", "name"):
        if key in fields:
            record[key] = str(fields.pop(key))[:MAX_TEXT]
    record.update(address=client_address(request, settings), method=request.method,
                  path=request.url.path[:MAX_TEXT])
    for key, value in fields.items():
        if isinstance(value, list):
            record[key] = [str(item)[:MAX_TEXT] for item in value[:MAX_LISTED]]
            if len(value) > MAX_LISTED:
                record[f"{key}_more"] = len(value) - MAX_LISTED
        else:
            record[key] = value if isinstance(value, bool | int) else str(value)[:MAX_TEXT]
    log.info("audit %s", json.dumps(record))
