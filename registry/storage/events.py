"""Event records, their outbox, the events queue, webhooks and their delivery log.

An event is never lost between a write's 2xx and its subscribers, on any instance, at any crash:
1. Before a write that has subscribers, its event gets an id and an intent: a row in the events
   table (partitions `pending:00`..`15`, naming the repository's partition) and a queue message,
   sent delayed, that asks a worker to look for the event (ops/events.py).
2. The write's own entity-group transaction creates the event row (`e:<id>` in the repository's
   partition): the event exists if and only if the write happened. A transaction carries an
   event announced at most FRESH_SECONDS before (a slow write announces again).
3. A worker that finds the row POSTs it to each subscriber (failures go back on the queue), then
   replaces the row with a marker (`handed`) and marks the intent settled. Not there yet, the
   worker looks again a little later.
4. A sweep (timer) takes every intent older than a minute: it hands on events no message did,
   and fences off a write that never came: a tombstone (`abandoned`) takes the event's key, so
   that write, should it still arrive, fails instead of committing without its event. Markers
   and tombstones are forgotten once no write can meet them. A lost message or a crash between
   any two steps costs latency, not the event; duplicates are possible (at least once).

Tables: events `<prefix>events` (intents in `pending:NN`, deliveries in `log:<webhook>`);
webhooks are rows of the catalog, partition `webhook`.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from registry.oci.errors import NAME_UNKNOWN, RegistryError
from registry.oci.events import ACTIONS, DEFAULT_ACTIONS, SCHEMAS, EventRecord, RequestInfo, parse_scope
from registry.storage.errors import unavailable
from registry.storage.metadata import MAX_BATCH, MetadataStore, int64, read_int

EVENT = "e:"  # an event row in its repository's partition
PENDING = "pending:"  # intents: partitions pending:00 .. pending:15
PENDING_PARTITIONS = 16
ABANDONED = "abandoned"  # an event row that is a tombstone (EventOutbox.abandon)
HANDED = "handed"  # an event row handed on to its subscribers (EventOutbox.done)
ANNOUNCE_SECONDS = 1.0
FRESH_SECONDS = 30.0  # a transaction carries an event announced at most this long ago
MAX_FIELD = 255
LOG = "log:"
WEBHOOK_PARTITION = "webhook"
NAME = re.compile(r"[a-zA-Z0-9]{5,50}")
EVENT_GRID = "eventgrid"  # the Event Grid topic of the settings, delivered like a webhook
REFERENCE_PREFIXES = ("env:", "file:", "keyvault:")
MAX_LOG_ERROR = 512

log = logging.getLogger("berth.events")

# The request a write belongs to (set by the API for writes; None: the registry's own work).
current_request: ContextVar[RequestInfo | None] = ContextVar("berth_request", default=None)


def request_or_internal(useragent: str) -> RequestInfo:
    return current_request.get() or RequestInfo(id=str(uuid.uuid4()), host="", method="", useragent=useragent)


# --- webhooks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    name: str
    uri: str
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    scope: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # values: literal, or env:/file:/keyvault:
    enabled: bool = True
    schema: str = "acr"
    secret: str | None = None  # a reference: signs each body (X-Berth-Signature-256)
    created: datetime | None = None

    def wants(self, action: str, repository: str, tag: str | None) -> bool:
        return self.enabled and action in self.actions and parse_scope(self.scope).matches(repository, tag)

    def document(self) -> dict[str, Any]:
        """What `webhook show` prints: header values that are references are shown as such,
        literal ones are masked, and so is the URI's query (they may be credentials)."""
        uri = urlsplit(self.uri)
        shown = uri._replace(query="***" if uri.query else "", fragment="").geturl()
        return {"name": self.name, "serviceUri": shown, "actions": list(self.actions), "scope": self.scope,
                "status": "enabled" if self.enabled else "disabled", "schema": self.schema,
                "customHeaders": {k: v if v.startswith(REFERENCE_PREFIXES) else "***" for k, v in self.headers.items()},
                "signingSecret": self.secret,
                "createdTime": self.created.astimezone(UTC).isoformat() if self.created else None}


def check_webhook(hook: Webhook, allowed_hosts: tuple[str, ...]) -> None:
    """Raises ValueError for a webhook Berth would refuse to call."""
    if not NAME.fullmatch(hook.name) or hook.name == EVENT_GRID:
        raise ValueError("a webhook's name is 5-50 letters and digits (and not 'eventgrid')")
    parts = urlsplit(hook.uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the service URI must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("put credentials in a header (--header 'Authorization=env:NAME'), not in the URI")
    if not host_allowed(parts.hostname, allowed_hosts):
        raise ValueError(f"{parts.hostname} is not in BERTH_WEBHOOK_ALLOWED_HOSTS")
    if not hook.actions or any(action not in ACTIONS for action in hook.actions):
        raise ValueError(f"actions are {' and '.join(ACTIONS)}")
    if hook.schema not in SCHEMAS:
        raise ValueError(f"the schema is one of {', '.join(SCHEMAS)}")
    parse_scope(hook.scope)
    for name, value in hook.headers.items():
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}", name) or not header_value_ok(value) \
                or name.lower() in RESERVED_HEADERS or name.lower().startswith("x-berth-"):
            raise ValueError(f"{name[:40]!r} is not a header one may set")
    if hook.secret is not None and not hook.secret.startswith(REFERENCE_PREFIXES):
        raise ValueError("the signing secret is a reference: env:NAME, file:/path or a Key Vault secret URI")


# Headers that frame the request or that Berth sets: a webhook's own may not replace them.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "trailer",
                              "upgrade", "expect", "keep-alive", "proxy-connection"})


def header_value_ok(value: str) -> bool:
    return not any(c in value for c in "\r\n\0")


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Empty allow-list: every host. Entries are host names, or `*.domain` for its subdomains."""
    host = host.lower().rstrip(".")
    return not allowed or any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:]))
                              for entry in allowed)


class Webhooks:
    """Webhook definitions; the push path asks `any_enabled`, which is kept `ttl` seconds."""

    def __init__(self, metadata: MetadataStore, ttl: float):
        self._metadata = metadata
        self._ttl = ttl
        self._cached: tuple[float, list[Webhook]] | None = None

    async def create(self, hook: Webhook, allowed_hosts: tuple[str, ...]) -> Webhook:
        check_webhook(hook, allowed_hosts)
        try:
            await self._metadata.catalog.create_entity({**_row(hook), "created": datetime.now(UTC)})
        except ResourceExistsError:
            raise ValueError(f"a webhook named {hook.name} exists; update or delete it") from None
        self._cached = None
        return await self.get(hook.name)

    async def update(self, name: str, allowed_hosts: tuple[str, ...], **changes: Any) -> Webhook:
        hook = replace(await self.get(name), **changes)
        check_webhook(hook, allowed_hosts)
        await self._metadata.catalog.upsert_entity(_row(hook), mode=UpdateMode.MERGE)
        self._cached = None
        return await self.get(name)

    async def get(self, name: str) -> Webhook:
        row = await self._metadata.get(self._metadata.catalog, WEBHOOK_PARTITION, name)
        if row is None:
            raise RegistryError(NAME_UNKNOWN, f"there is no webhook named {name}")
        return _webhook(row)

    async def list(self) -> list[Webhook]:
        return [_webhook(row) async for row in self._metadata.scan(self._metadata.catalog, WEBHOOK_PARTITION, "")]

    async def delete(self, name: str) -> None:
        if not await self._metadata.delete(self._metadata.catalog, WEBHOOK_PARTITION, name):
            raise RegistryError(NAME_UNKNOWN, f"there is no webhook named {name}")
        self._cached = None

    async def current(self) -> list[Webhook]:
        """The definitions as of at most `ttl` seconds ago."""
        now = time.monotonic()
        if self._cached is None or self._cached[0] < now:
            self._cached = (now + self._ttl, await self.list())
        return self._cached[1]


def _row(hook: Webhook) -> dict[str, Any]:
    return {"PartitionKey": WEBHOOK_PARTITION, "RowKey": hook.name, "uri": hook.uri, "actions": ",".join(hook.actions),
            "scope": hook.scope, "headers": json.dumps(hook.headers), "enabled": hook.enabled, "schema": hook.schema,
            "secret": hook.secret or ""}


def _webhook(row: dict[str, Any]) -> Webhook:
    created = row.get("created")
    return Webhook(row["RowKey"], row["uri"], tuple(a for a in row["actions"].split(",") if a), row.get("scope", ""),
                   json.loads(row.get("headers") or "{}"), bool(row.get("enabled", True)), row.get("schema", "acr"),
                   row.get("secret") or None, created if isinstance(created, datetime) else None)


# --- the queue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedMessage:
    body: dict[str, Any]
    dequeue_count: int
    handle: Any  # the SDK's message, to delete it


class EventQueue:
    """The events queue. Bodies are JSON, base64-encoded as the Functions queue trigger expects."""

    def __init__(self, queue: QueueClient):
        self._queue = queue
        self.name = queue.queue_name

    async def ensure(self) -> None:
        try:
            await self._queue.create_queue()
        except ResourceExistsError:
            pass

    async def send(self, body: dict[str, Any], delay: float = 0) -> None:
        text = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
        # Whole seconds (rounded up: a delay is a minimum); time_to_live -1: a message waits for
        # its worker however long that takes.
        seconds = min(math.ceil(delay), 7 * 24 * 3600) if delay > 0 else 0
        await self._queue.send_message(text, visibility_timeout=seconds or None, time_to_live=-1)

    async def receive(self, count: int, invisible_for: int) -> list[QueuedMessage]:
        """Up to `count` messages, hidden from others for `invisible_for` seconds; none if the
        queue does not exist (a poison queue before the host's first give-up)."""
        messages = []
        try:
            async for message in self._queue.receive_messages(messages_per_page=count, max_messages=count,
                                                              visibility_timeout=invisible_for):
                messages.append(message)
        except ResourceNotFoundError:
            return []
        decoded = []
        for message in messages:
            try:
                body = decode_message(message.content)
            except ValueError:
                log.error("dropping an events message that is not Berth's: %.200r", message.content)
                await self._queue.delete_message(message)
                continue
            decoded.append(QueuedMessage(body, message.dequeue_count or 1, message))
        return decoded

    async def delete(self, message: QueuedMessage) -> None:
        await self._queue.delete_message(message.handle)

    async def close(self) -> None:
        await self._queue.close()


def decode_message(content: str | bytes) -> dict[str, Any]:
    """A queue message's body: base64 JSON, or JSON (the Functions host hands over decoded bytes)."""
    raw = content.encode() if isinstance(content, str) else content
    try:
        document = json.loads(raw)
    except ValueError:
        document = json.loads(base64.b64decode(raw, validate=True))
    if not isinstance(document, dict) or "kind" not in document:
        raise ValueError("not an events message")
    return document


# --- the outbox ----------------------------------------------------------------------------


def _short(text: str | None, limit: int = MAX_FIELD) -> str:
    """A request-supplied field as an event carries it: at most `limit` characters."""
    return (text or "")[:limit]


@dataclass(frozen=True)
class PendingEvent:
    """An event announced before its write; the write's transaction carries `operation`."""

    id: str
    partition: str
    fresh_until: float = 0.0  # time.monotonic(): see EventOutbox.fresh

    def operation(self, action: str, repository: str, digest: str, media_type: str, size: int | None,
                  tags: tuple[str, ...] = (), artifact_type: str | None = None,
                  subject: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The event row, created (never replaced) in the write's transaction: if the event was
        abandoned meanwhile (EventOutbox.abandon), its tombstone fails the write instead."""
        request = request_or_internal("berth")
        row: dict[str, Any] = {
            "PartitionKey": self.partition, "RowKey": EVENT + self.id, "action": action, "repository": repository,
            "digest": digest, "mediaType": _short(media_type), "tags": json.dumps(list(tags)),
            "request": json.dumps({"id": request.id, "host": _short(request.host), "method": request.method,
                                   "useragent": _short(request.useragent), "addr": _short(request.addr),
                                   "actor": _short(request.actor)}),
            "at": datetime.now(UTC),
        }
        if size is not None:
            row["size"] = int64(size)
        # A media type is at most 255 characters (RFC 6838); anything longer is left out, so an
        # event row and its messages stay small whatever a manifest says.
        if artifact_type and len(artifact_type) <= MAX_FIELD:
            row["artifactType"] = artifact_type
        if subject and len(subject.get("mediaType", "")) <= MAX_FIELD:
            row["subject"] = json.dumps(subject)
        return ("create", row, {})


def record_of(row: dict[str, Any]) -> EventRecord:
    request = json.loads(row["request"])
    at = row["at"]
    return EventRecord(
        id=row["RowKey"][len(EVENT):], action=row["action"], repository=row["repository"], digest=row["digest"],
        media_type=row["mediaType"], size=read_int(row, "size") if "size" in row else None,
        timestamp=at if isinstance(at, datetime) else datetime.fromisoformat(at),
        request=RequestInfo(request["id"], request["host"], request["method"], request["useragent"],
                            request.get("addr", ""), request.get("actor", "")),
        tags=tuple(json.loads(row.get("tags") or "[]")), artifact_type=row.get("artifactType") or None,
        subject=json.loads(row["subject"]) if row.get("subject") else None)


def pending_partition(event_id: str) -> str:
    """Intents spread over PENDING_PARTITIONS partitions: no one partition takes every write."""
    return f"{PENDING}{int(event_id[:4], 16) % PENDING_PARTITIONS:02d}"


# What a write's event row is, after the write: the event itself, or one of two markers that keep
# its key taken until no late or retried write can meet it (EventOutbox.forget).
ABSENT, RECORDED, HANDED_ON = "absent", "recorded", "handed-on"


@dataclass(frozen=True)
class Intent:
    """An announced event the sweep looks at."""

    partition: str  # the repository's
    event_id: str
    announced: datetime  # when `prepare` wrote it (its writer's clock); the sweep's age
    settled: str  # "", HANDED_ON or ABANDONED: its event row is a marker now
    row: dict[str, Any]


class EventOutbox:
    """Announces events before their writes (see the module's docstring) and finds them after."""

    def __init__(self, metadata: MetadataStore, events: TableClient, queue: EventQueue, poison: EventQueue,
                 webhooks: Webhooks, always: bool, look_after: float, fault: str = ""):
        self._metadata = metadata
        self.table = events
        self.queue = queue
        self.poison = poison
        self.webhooks = webhooks
        self._always = always  # an Event Grid topic is configured: every write has a subscriber
        self._look_after = look_after
        self._fault = fault  # tests only: "no-message", "crash" (no message, exit after the commit)

    async def ensure(self) -> None:
        try:
            await self.table.create_table()
        except ResourceExistsError:
            pass
        try:  # the queue only speeds delivery up (the sweep covers it): never a reason not to start
            await self.queue.ensure()
        except Exception as error:
            log.warning("the events queue %s cannot be created now: %r", self.queue.name, error)

    async def prepare(self, partition: str) -> PendingEvent | None:
        """An id and an intent for the event of a write about to happen; None without subscribers."""
        if not self._always and not any(hook.enabled for hook in await self.webhooks.current()):
            return None
        pending = PendingEvent(uuid.uuid4().hex, partition, time.monotonic() + FRESH_SECONDS)
        # Both at once (a message found before its event looks again; see ops/events.py). The row
        # must be written: without it a crash could lose the event. The message only saves time.
        await asyncio.gather(
            self.table.upsert_entity({"PartitionKey": pending_partition(pending.id), "RowKey": pending.id,
                                      "partition": partition, "announced": datetime.now(UTC)}),
            self._announce(pending))
        return pending

    async def fresh(self, pending: PendingEvent | None) -> PendingEvent | None:
        """The event to carry in the next transaction: a new one once `pending` is older than
        FRESH_SECONDS, so a transaction always lands well inside its intent's window, however
        long the write took before it (a repository delete, an import, retention)."""
        if pending is None or time.monotonic() < pending.fresh_until:
            return pending
        await self.withdraw(pending)  # never carried by a transaction that may have committed
        return await self.prepare(pending.partition)

    async def withdraw(self, pending: PendingEvent | None) -> None:
        """A write that certainly did not commit: its intent goes now (best effort; the sweep
        would otherwise fence it off later)."""
        if pending is None:
            return
        try:
            await _delete(self.table, pending_partition(pending.id), pending.id)
        except Exception as error:
            log.info("intent %s stays for the sweep: %r", pending.id, error)

    async def _announce(self, pending: PendingEvent) -> None:
        if self._fault:
            return
        try:  # bounded: a slow queue must not hold the push (the sweep covers a lost message)
            async with asyncio.timeout(ANNOUNCE_SECONDS):
                await self.queue.send(look_message(pending.partition, pending.id, 1), delay=self._look_after)
        except Exception as error:
            log.warning("event %s announced without a queue message: %r", pending.id, error)

    def committed(self, pending: PendingEvent | None) -> None:
        """Called once the write that holds the event is durable (tests crash here)."""
        if pending is not None and self._fault == "crash":
            log.error("BERTH_TEST_EVENT_FAULT=crash: exiting after the write of event %s", pending.id)
            os._exit(137)

    async def recorded(self, pending: PendingEvent | None) -> bool:
        """After a write's transaction failed: whether it had committed after all (a retried
        request whose first answer was lost; its event may be handed on by now). A tombstone
        means the write took too long and can never commit: 503, the client retries."""
        if pending is None:
            return False
        state, _ = await self.lookup(pending.partition, pending.id)
        if state == ABANDONED:
            raise unavailable("the write took too long; its event was given up: retry it")
        return state != ABSENT

    async def lookup(self, partition: str, event_id: str) -> tuple[str, dict[str, Any] | None]:
        """(ABSENT | RECORDED | HANDED_ON | ABANDONED, the event row if RECORDED)."""
        row = await self._metadata.get(self._metadata.repos, partition, EVENT + event_id)
        if row is None:
            return ABSENT, None
        if row.get(ABANDONED):
            return ABANDONED, None
        if row.get(HANDED):
            return HANDED_ON, None
        return RECORDED, row

    async def done(self, partition: str, event_id: str) -> None:
        """The event is handed on: its row becomes a marker (a retried write that meets it knows
        it committed), its intent says so; the sweep forgets both later."""
        await self._metadata.repos.upsert_entity({"PartitionKey": partition, "RowKey": EVENT + event_id, HANDED: True},
                                                 mode=UpdateMode.REPLACE)
        await self._settle(event_id, HANDED_ON)

    async def abandon(self, partition: str, event_id: str) -> dict[str, Any] | None:
        """Give up an event whose write has not committed: a tombstone takes the event row's key,
        so the write, should its transaction still arrive, fails (409) instead of committing
        without its event. Returns the event row if the write did commit after all."""
        try:
            await self._metadata.repos.create_entity({"PartitionKey": partition, "RowKey": EVENT + event_id,
                                                      ABANDONED: True})
        except ResourceExistsError:
            state, row = await self.lookup(partition, event_id)
            if state == RECORDED:
                return row
            await self._settle(event_id, state)
            return None
        await self._settle(event_id, ABANDONED)
        return None

    async def _settle(self, event_id: str, settled: str) -> None:
        try:  # a MERGE: an intent already forgotten is not brought back
            await self.table.update_entity({"PartitionKey": pending_partition(event_id), "RowKey": event_id,
                                            "settled": settled}, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            pass

    async def forget(self, partition: str, event_id: str) -> None:
        """A marker no late or retried write can meet any more, and its intent."""
        await _delete(self._metadata.repos, partition, EVENT + event_id)
        await _delete(self.table, pending_partition(event_id), event_id)

    async def intents(self, older_than: timedelta) -> AsyncIterator[Intent]:
        """Intents last written longer than `older_than` ago (storage's clock), every partition."""
        cutoff = datetime.now(UTC) - older_than
        for shard in range(PENDING_PARTITIONS):
            async for row in self._metadata.scan(self.table, f"{PENDING}{shard:02d}", "",
                                                 extra_filter=" and Timestamp lt @cutoff",
                                                 parameters={"cutoff": cutoff}):
                announced = row.get("announced")
                yield Intent(row["partition"], row["RowKey"],
                             announced if isinstance(announced, datetime) else row.metadata["timestamp"],
                             row.get("settled") or "", row)

    async def claim(self, intent: Intent) -> bool:
        """One sweep takes an intent (If-Match): sweeps on several instances do not all hand it on.
        The write restarts the row's Timestamp: the next sweeps skip it for a sweep age, a lease."""
        try:
            await self.table.update_entity(
                {"PartitionKey": intent.row["PartitionKey"], "RowKey": intent.event_id, "swept": datetime.now(UTC)},
                mode=UpdateMode.MERGE, etag=intent.row.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True


async def _delete(table: TableClient, partition: str, row: str) -> None:
    try:
        await table.delete_entity(partition, row)
    except ResourceNotFoundError:
        pass


def look_message(partition: str, event_id: str, attempt: int) -> dict[str, Any]:
    return {"kind": "event", "partition": partition, "event": event_id, "look": attempt,
            "announced": datetime.now(UTC).isoformat()}


# --- the delivery log ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one event to one subscriber, as `webhook events` shows it."""

    webhook: str
    event_id: str
    action: str
    repository: str
    tag: str
    digest: str
    attempt: int
    outcome: str  # delivered, retrying, dead-lettered, skipped
    status: int | None  # the receiver's HTTP status (None: no answer)
    milliseconds: int
    error: str = ""
    at: datetime | None = None
    payload: str = ""  # a dead-lettered event's body, for a redelivery by hand


_NEVER = 10 ** 13  # keys count down from here, so a partition lists the newest first


class DeliveryLog:
    def __init__(self, events: TableClient, metadata: MetadataStore):
        self._table = events
        self._metadata = metadata

    async def record(self, delivery: Delivery) -> None:
        now = datetime.now(UTC)
        key = (f"{_NEVER - int(now.timestamp() * 1000):013d}:{delivery.event_id}:{delivery.attempt}:"
               f"{uuid.uuid4().hex[:6]}")
        row: dict[str, Any] = {
            "PartitionKey": LOG + delivery.webhook, "RowKey": key, "event": delivery.event_id,
            "action": delivery.action, "repository": delivery.repository, "tag": delivery.tag,
            "digest": delivery.digest, "attempt": delivery.attempt, "outcome": delivery.outcome,
            "status": delivery.status if delivery.status is not None else -1, "ms": delivery.milliseconds,
            "error": delivery.error[:MAX_LOG_ERROR], "at": now,
        }
        if delivery.payload:
            row["payload"] = delivery.payload[:30000]
        await self._table.upsert_entity(row)

    async def recent(self, webhook: str, top: int) -> list[Delivery]:
        rows = self._metadata.scan(self._table, LOG + webhook, "", limit=top)
        return [_delivery(webhook, row) async for row in rows]

    async def prune(self, webhook: str, older_than: timedelta) -> int:
        """Delete log rows older than `older_than` (they sort last); returns how many."""
        cutoff = datetime.now(UTC) - older_than
        low = f"{_NEVER - int(cutoff.timestamp() * 1000):013d}"
        stale = [row async for row in self._metadata.scan(self._table, LOG + webhook, "", after=low,
                                                          select=["RowKey"])]
        for start in range(0, len(stale), MAX_BATCH):
            batch = [("delete", {"PartitionKey": LOG + webhook, "RowKey": row["RowKey"]})
                     for row in stale[start:start + MAX_BATCH]]
            try:
                await self._table.submit_transaction(batch)
            except TableTransactionError:  # another pruner took some: one by one
                for _, row in batch:
                    await _delete(self._table, row["PartitionKey"], row["RowKey"])
        return len(stale)

def _delivery(webhook: str, row: dict[str, Any]) -> Delivery:
    status = int(row.get("status", -1))
    at = row.get("at")
    return Delivery(webhook, row["event"], row.get("action", ""), row.get("repository", ""), row.get("tag", ""),
                    row.get("digest", ""), int(row.get("attempt", 1)), row.get("outcome", ""),
                    None if status < 0 else status, int(row.get("ms", 0)), row.get("error", ""),
                    at if isinstance(at, datetime) else None, row.get("payload", ""))
