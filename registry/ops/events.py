"""Delivers recorded events (storage/events.py) to webhooks and to an Event Grid topic.

Work arrives as messages on the events queue, from any instance:
- `event`: look for an announced event; found, it is fanned out: one POST per subscriber (and
  tag), at once; not yet there, it is looked for again a little later.
- `deliver`: a retry of one event to one subscriber. A failed POST (or a timeout) is retried by a
  new message made visible after an exponential, jittered delay; after the last attempt the
  event is dead-lettered: kept in the subscriber's delivery log with its body.
The sweep (a timer on Azure, a loop in `serve`) takes every intent older than the sweep age: it
hands on events messages did not, and fences off writes that never came (EventOutbox.abandon).

Receivers are reached through the SSRF guard of the upstream client: private addresses only
where BERTH_WEBHOOK_PRIVATE_HOSTS allows them, redirects never followed (3xx is a failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from registry.oci.errors import RegistryError
from registry.oci.events import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    envelope,
    ping_event,
    retry_delay,
    signature,
)
from registry.ops.secrets import SecretReader, SecretUnavailable, key_vault_credential
from registry.ops.upstream import GuardedConnector, UpstreamForbidden
from registry.settings import Settings
from registry.storage.events import (
    ABANDONED,
    ABSENT,
    EVENT_GRID,
    HANDED_ON,
    REFERENCE_PREFIXES,
    RESERVED_HEADERS,
    Delivery,
    Intent,
    QueuedMessage,
    Webhook,
    header_value_ok,
    host_allowed,
    record_of,
)
from registry.storage.registry_store import RegistryStore

EVENT_GRID_SCOPE = "https://eventgrid.azure.net/.default"
MAX_RESPONSE = 64 * 1024  # of a receiver's answer, read and dropped
BATCH = 16  # messages a `serve` worker takes at once
POISON_AFTER = 5  # a message that failed this often is dropped (the Functions host: its poison queue)
PRUNE_SECONDS = 3600
IDLE_POLL = (0.25, 2.0)  # `serve`'s worker asks an empty queue after these waits, doubling

log = logging.getLogger("berth.events")


@dataclass
class SweepReport:
    handed_on: int = 0
    abandoned: int = 0
    dead_lettered: int = 0
    pruned: int = 0

    def summary(self) -> str:
        return (f"{self.handed_on} events handed on, {self.abandoned} announcements of writes that never "
                f"happened fenced off, {self.dead_lettered} deliveries taken from the poison queue, "
                f"{self.pruned} old delivery records pruned")


def deliver_message(webhook: str, event: dict[str, Any], attempt: int) -> dict[str, Any]:
    return {"kind": "deliver", "webhook": webhook, "event": event, "attempt": attempt}


class EventDispatcher:
    def __init__(self, store: RegistryStore, settings: Settings):
        self._store = store
        self._settings = settings
        self._identity = key_vault_credential(settings.managed_identity_client_id)
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[float, str] | None = None  # Event Grid: (expires, bearer token)
        self._next_prune = 0.0

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            allowed = list(self._settings.webhook_private_hosts)
            if self._settings.eventgrid_topic_endpoint:  # the operator's own topic, maybe a private endpoint
                allowed.append(urlsplit(self._settings.eventgrid_topic_endpoint).hostname or "")
            self._session = aiohttp.ClientSession(
                connector=GuardedConnector(allowed, setting="BERTH_WEBHOOK_PRIVATE_HOSTS", limit=64),
                trust_env=False, timeout=aiohttp.ClientTimeout(total=self._settings.webhook_timeout_seconds))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._identity.close()

    # --- queue messages ------------------------------------------------------------------

    async def handle(self, body: dict[str, Any]) -> None:
        """One queue message; raises to have it retried (the queue makes it visible again)."""
        kind = body.get("kind")
        if kind == "event":
            await self._look(body)
        elif kind == "deliver":
            await self._deliver(body)
        else:
            log.error("dropping an events message of unknown kind %.40r", kind)

    async def _look(self, body: dict[str, Any]) -> None:
        outbox = self._store.events
        partition, event_id, look = body["partition"], body["event"], int(body.get("look", 1))
        # An intent older than the sweep age is the sweep's (which claims it): handing it on from
        # here too would deliver it twice whenever messages queue up behind a slow worker.
        if datetime.now(UTC) - datetime.fromisoformat(body["announced"]) >= self._sweep_age():
            return
        state, row = await outbox.lookup(partition, event_id)
        if row is not None:
            await self.fan_out(partition, row)
        elif state == ABSENT:  # its write has not committed yet (or never will: the sweep decides that)
            await outbox.queue.send({**body, "look": look + 1}, delay=min(2 ** look, 30))

    def _sweep_age(self) -> timedelta:
        return timedelta(seconds=self._settings.event_sweep_age_seconds)

    def _write_window(self) -> timedelta:
        """How long after its announcement a write usually commits: its budget, plus slack. A
        write later than that is not lost: `abandon` makes it fail (and its client retry)."""
        return timedelta(seconds=self._settings.request_budget_seconds + 60)

    async def fan_out(self, partition: str, row: dict[str, Any]) -> None:
        """Hand a recorded event to every subscriber that wants it, then forget the record.

        The first attempts are made here, at once; only failures go back on the queue (a retry
        message each). A crash before `done` makes the event's message come back: subscribers
        that had it get it again (at least once)."""
        record = record_of(row)
        subscribers = await self._subscribers()
        await asyncio.gather(*(self._attempt(hook.name, hook, event, 1)
                               for event in record.events() for hook in subscribers
                               if hook.wants(record.action, record.repository, event["target"].get("tag"))))
        await self._store.events.done(partition, record.id)

    async def _subscribers(self) -> list[Webhook]:
        """Enabled webhooks as of BERTH_WEBHOOKS_TTL_SECONDS ago, and the Event Grid topic."""
        hooks = [hook for hook in await self._store.webhooks.current() if hook.enabled]
        if self._settings.eventgrid_topic_endpoint:
            hooks.append(Webhook(EVENT_GRID, self._settings.eventgrid_topic_endpoint, schema="eventgrid"))
        return hooks

    async def _subscriber(self, name: str) -> Webhook | None:
        """A retry's webhook as it is now: gone or disabled since, the retry is skipped."""
        if name == EVENT_GRID:
            endpoint = self._settings.eventgrid_topic_endpoint
            return Webhook(EVENT_GRID, endpoint, schema="eventgrid") if endpoint else None
        try:
            return await self._store.webhooks.get(name)
        except RegistryError:
            return None

    async def _deliver(self, body: dict[str, Any]) -> None:
        name, event, attempt = body["webhook"], body["event"], int(body.get("attempt", 1))
        await self._attempt(name, await self._subscriber(name), event, attempt)

    async def _attempt(self, name: str, hook: Webhook | None, event: dict[str, Any], attempt: int) -> None:
        """One POST of one event; a failure is queued again after a backoff, or dead-lettered."""
        target = event.get("target") or {}

        def entry(outcome: str, status: int | None, milliseconds: int, error: str = "", payload: str = "") -> Delivery:
            return Delivery(name, event["id"], event.get("action", ""), target.get("repository", ""),
                            target.get("tag", ""), target.get("digest", ""), attempt, outcome, status, milliseconds,
                            error, payload=payload)

        if hook is None:  # deleted (with its log): nothing to tell anyone
            log.info("webhook %s is gone: event %s not delivered", name, event["id"])
            return
        if not hook.enabled:
            await self._log(entry("skipped", None, 0, "the webhook is disabled"))
            return
        status, milliseconds, error = await self.post(hook, event)
        if status is not None and 200 <= status < 300:
            await self._log(entry("delivered", status, milliseconds))
        elif attempt < self._settings.webhook_attempts:
            # The only step that raises: the message comes back and the attempt is made again.
            delay = retry_delay(attempt, self._settings.webhook_backoff_seconds)
            await self._store.events.queue.send(deliver_message(name, event, attempt + 1), delay=delay)
            await self._log(entry("retrying", status, milliseconds, error))
        else:
            await self._log(entry("dead-lettered", status, milliseconds, error, payload=json.dumps(event)))
            log.warning("webhook %s: event %s dead-lettered after %d attempts (%s)", name, event["id"],
                        attempt, error or f"HTTP {status}")

    async def _log(self, delivery: Delivery) -> None:
        """The delivery log is for people: a failure to write it never repeats a delivery."""
        try:
            await self._store.deliveries.record(delivery)
        except Exception as error:
            log.warning("webhook %s: delivery of %s (%s) not logged: %r", delivery.webhook, delivery.event_id,
                        delivery.outcome, error)

    async def post(self, hook: Webhook, event: dict[str, Any]) -> tuple[int | None, int, str]:
        """POST one event: (HTTP status or None, milliseconds, what went wrong)."""
        document, content_type = envelope(event, hook.schema, self._settings.public_url or "berth")
        data = json.dumps(document, separators=(",", ":")).encode()
        host = urlsplit(hook.uri).hostname or ""
        if hook.name != EVENT_GRID and not host_allowed(host, self._settings.webhook_allowed_hosts):
            return None, 0, f"{host} is not in BERTH_WEBHOOK_ALLOWED_HOSTS"
        started = time.monotonic()
        try:
            headers = await self._headers(hook, event, data, content_type)
            async with self._http().post(hook.uri, data=data, headers=headers, allow_redirects=False) as response:
                await response.content.read(MAX_RESPONSE)
                status = response.status
        except SecretUnavailable as error:
            return None, 0, f"a secret cannot be read: {error}"
        except UpstreamForbidden as error:
            return None, 0, str(error)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return None, _since(started), f"{type(error).__name__}: {error}"[:300]
        except Exception as error:  # whatever it is, a failed attempt: retried, then dead-lettered
            log.warning("webhook %s: delivery failed unexpectedly", hook.name, exc_info=True)
            return None, _since(started), f"{type(error).__name__}: {error}"[:300]
        milliseconds = _since(started)
        if 300 <= status < 400:
            return status, milliseconds, "redirects are not followed"
        return status, milliseconds, "" if 200 <= status < 300 else f"HTTP {status}"

    async def _headers(self, hook: Webhook, event: dict[str, Any], data: bytes, content_type: str) -> dict[str, str]:
        reader = SecretReader(self._http(), self._identity)
        headers = {"Content-Type": content_type, "User-Agent": "Berth-Webhook/1.0", DELIVERY_HEADER: event["id"]}
        for name, value in hook.headers.items():  # the webhook's own, as ACR: they may replace ours
            if name.lower() in RESERVED_HEADERS or name.lower().startswith("x-berth-"):
                continue
            if value.startswith(REFERENCE_PREFIXES):
                value = await reader.read(value)
                if not header_value_ok(value):  # e.g. a secret file with a Windows line ending
                    raise SecretUnavailable(f"the value of header {name} holds a line break")
            headers[name] = value
        if hook.secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(await reader.read(hook.secret), timestamp, data)
        if hook.name == EVENT_GRID:
            if self._settings.eventgrid_key:
                headers["aeg-sas-key"] = await reader.read(self._settings.eventgrid_key)
            else:
                headers["Authorization"] = f"Bearer {await self._event_grid_token()}"
        return headers

    async def _event_grid_token(self) -> str:
        if self._token is None or self._token[0] < time.time() + 300:
            credential = await self._identity()
            token = await credential.get_token(EVENT_GRID_SCOPE)
            self._token = (token.expires_on, token.token)
        return self._token[1]

    async def ping(self, hook: Webhook) -> Delivery:
        """`webhook ping`: one ping event, now, recorded in the delivery log as any delivery."""
        event = ping_event(datetime.now(UTC), urlsplit(self._settings.public_url or "https://berth").netloc)
        status, milliseconds, error = await self.post(hook, event)
        outcome = "delivered" if status is not None and 200 <= status < 300 else "failed"
        delivery = Delivery(hook.name, event["id"], "ping", "", "", "", 1, outcome, status, milliseconds, error)
        await self._store.deliveries.record(delivery)
        return delivery

    # --- the sweep and the local worker --------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Hand on announced events older than the sweep age; fence and drop announcements of
        writes that never happened; hourly (per instance), prune delivery logs."""
        report = SweepReport()
        async for intent in self._store.events.intents(self._sweep_age()):
            try:
                await self._sweep_one(intent, report)
            except Exception:  # one bad intent must not stop the others
                log.exception("event sweep: intent %s failed; it is tried again next time", intent.event_id)
        report.dead_lettered += await self._drain_poison()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_SECONDS
            names = [hook.name for hook in await self._store.webhooks.list()] + [EVENT_GRID]
            for name in names:
                report.pruned += await self._store.deliveries.prune(name, timedelta(days=self._settings.event_log_days))
        return report

    async def _sweep_one(self, intent: Intent, report: SweepReport) -> None:
        outbox = self._store.events
        age = datetime.now(UTC) - intent.announced
        if intent.settled:  # handed on or fenced: once no write can meet its marker, both go
            if age > 2 * self._write_window():
                await outbox.forget(intent.partition, intent.event_id)
            return
        if not await outbox.claim(intent):  # another sweep has it
            return
        state, row = await outbox.lookup(intent.partition, intent.event_id)
        if state == HANDED_ON:  # handed on, its intent not yet marked
            await outbox.done(intent.partition, intent.event_id)
        elif state == ABANDONED or (state == ABSENT and age > self._write_window()):
            row = await outbox.abandon(intent.partition, intent.event_id)
            if row is None:
                report.abandoned += 1
        if row is not None:
            await self.fan_out(intent.partition, row)
            report.handed_on += 1

    async def _drain_poison(self) -> int:
        """Messages the Functions host gave up on (`<queue>-poison`): a delivery there is recorded
        as dead-lettered, so `webhook events` shows it; an event's intent is still the sweep's."""
        drained = 0
        for message in await self._store.events.poison.receive(BATCH, 60):
            if message.body.get("kind") == "deliver":
                await self._dead_letter(message.body, "the queue gave up on this delivery after repeated errors")
                drained += 1
            await self._store.events.poison.delete(message)
        return drained

    async def _dead_letter(self, body: dict[str, Any], error: str) -> None:
        event = body.get("event") or {}
        target = event.get("target") or {}
        await self._store.deliveries.record(Delivery(
            str(body.get("webhook", "")), str(event.get("id", "")), event.get("action", ""),
            target.get("repository", ""), target.get("tag", ""), target.get("digest", ""),
            int(body.get("attempt", 1)), "dead-lettered", None, 0, error, payload=json.dumps(event)))

    async def run(self, stop: asyncio.Event) -> None:
        """`serve`'s worker: take messages from the queue until `stop`; sweep alongside."""
        sweeper = asyncio.create_task(self._sweep_loop(stop))
        queue = self._store.events.queue
        invisible_for = 2 * self._settings.webhook_timeout_seconds + 30
        idle = IDLE_POLL[0]
        try:
            while not stop.is_set():
                try:
                    messages = await queue.receive(BATCH, invisible_for)
                    await asyncio.gather(*(self._process(message) for message in messages))
                    if messages:
                        idle = IDLE_POLL[0]
                        continue
                except Exception as error:  # storage away: try again shortly
                    log.warning("the events worker failed a round: %r", error)
                await _pause(stop, idle)
                idle = min(2 * idle, IDLE_POLL[1])  # an idle queue is asked less often, as the host does
        finally:
            await sweeper

    async def _sweep_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _pause(stop, self._settings.event_sweep_seconds)
            if stop.is_set():
                return
            try:
                report = await self.sweep()
                if report.handed_on or report.abandoned or report.dead_lettered:
                    log.info("event sweep: %s", report.summary())
            except Exception as error:
                log.warning("the event sweep failed: %r", error)

    async def _process(self, message: QueuedMessage) -> None:
        try:
            await self.handle(message.body)
        except Exception:
            if message.dequeue_count < POISON_AFTER:
                log.warning("events message failed (attempt %d); it comes back", message.dequeue_count,
                            exc_info=True)
                return
            log.exception("events message given up after %d attempts", message.dequeue_count)
            if message.body.get("kind") == "deliver":  # as the host's poison queue would
                await self._dead_letter(message.body, "the queue gave up on this delivery after repeated errors")
        await self._store.events.queue.delete(message)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

