"""Probes for load balancers and operators: /health/live (the process) and /health/ready (storage).

`/v2/` answers without touching storage (it is the API version check), so it cannot say
whether the registry can serve; `/health/ready` does, with a bounded wait.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, json_response
from registry.storage.errors import RETRY_AFTER_SECONDS, storage_failure

log = logging.getLogger("berth.health")


async def live(request: Request) -> Response:
    return json_response({"status": "live"})


async def ready(request: Request, ctx: Context) -> Response:
    try:
        await asyncio.wait_for(ctx.store.check_ready(), timeout=ctx.settings.storage_timeout_seconds)
    except Exception as error:
        if storage_failure(error) is None:
            raise
        log.warning("not ready: storage does not answer (%s)", type(error).__name__)
        return json_response({"status": "unavailable", "reason": "storage does not answer"}, status=503,
                             headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return json_response({"status": "ready"})
