"""Azure Functions entry point: binds Berth's routes to HTTP-triggered functions.

Uses the HTTP streaming extension (azurefunctions-extensions-http-fastapi), so requests and
responses are Starlette objects whose bodies stream: a layer never sits whole in memory.
Needs Functions runtime >= 4.34.1 and the app setting PYTHON_ENABLE_INIT_INDEXING=1.
"""

from __future__ import annotations

import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from registry.app import application_from_environment

# The storage SDKs log every call at INFO; in Application Insights that is noise and cost.
logging.getLogger("azure").setLevel(logging.WARNING)

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
# With wrong settings every request answers 503 and the log says why (the functions stay indexed).
berth = application_from_environment()

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


@app.route(route="v2/{*path}", methods=ALL_METHODS)
async def distribution_api(req: Request) -> Response:
    """The OCI Distribution API: /v2/ and everything below it."""
    return await berth.handle(req)


@app.route(route="acr/v1/{*path}", methods=["GET", "DELETE", "PATCH", "POST"])
async def acr_metadata_api(req: Request) -> Response:
    """The ACR metadata API: /acr/v1/_catalog and /acr/v1/<name>[/_tags|/_manifests[/...]], and
    POST /acr/v1/<name>/_import (import from another registry)."""
    return await berth.handle(req)


@app.route(route="oauth2/{*path}", methods=["GET", "POST"])
async def token_service(req: Request) -> Response:
    """The ACR-compatible token service: /oauth2/token and /oauth2/exchange."""
    return await berth.handle(req)


@app.route(route="health/{*path}", methods=["GET", "HEAD"])
async def health(req: Request) -> Response:
    """Probes: /health/live (the process answers) and /health/ready (storage answers)."""
    return await berth.handle(req)


@app.route(route="ui/{*path}", methods=["GET", "HEAD", "POST"])
async def web_page(req: Request) -> Response:
    """The read-only web page: repositories, tags, manifests and their referrers (/ui/)."""
    return await berth.handle(req)


@app.timer_trigger(schedule="0 17 * * * *", arg_name="timer", run_on_startup=False)
async def purge_expired_uploads(timer: func.TimerRequest) -> None:
    """Hourly: remove upload sessions that expired unfinished (and their bytes), and old failed-login records."""
    uploads, failures = await berth.purge_expired()
    logging.info("purged %d expired upload sessions and %d failed-login records", uploads, failures)


@app.timer_trigger(schedule="0 5 3 * * *", arg_name="timer", run_on_startup=False)
async def apply_retention(timer: func.TimerRequest) -> None:
    """Daily, before the garbage collection: untagged manifests past the retention policy, referrers
    of deleted subjects, unreferenced blob links (README, "Retention")."""
    report = await berth.apply_retention()
    logging.info("retention: %s", report.summary())


@app.timer_trigger(schedule="0 29 3 * * *", arg_name="timer", run_on_startup=False)
async def collect_garbage(timer: func.TimerRequest) -> None:
    """Daily: delete blob bytes no repository links to any more (README, "Garbage collection")."""
    report = await berth.collect_garbage()
    logging.info("garbage collection: %s", report.summary())


@app.queue_trigger(arg_name="message", queue_name="%BERTH_EVENTS_QUEUE%", connection="BERTH_EVENTS")
async def deliver_events(message: func.QueueMessage) -> None:
    """Events (README, "Events and webhooks"): look for an announced event and fan it out, or
    deliver one event to one webhook. An exception has the host retry the message (5 times)."""
    await berth.handle_event_message(message.get_body())


@app.timer_trigger(schedule="0 * * * * *", arg_name="timer", run_on_startup=False)
async def sweep_events(timer: func.TimerRequest) -> None:
    """Every minute: events no queue message handed on (a crash, a lost message), and old delivery logs."""
    report = await berth.sweep_events()
    if report.handed_on or report.abandoned:
        logging.info("event sweep: %s", report.summary())
