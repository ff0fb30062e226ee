"""Registry events as subscribers see them: ACR's webhook payload, the Event Grid and CloudEvents
envelopes around it, webhook scope filters, the delivery signature and the retry schedule.

Pure data in, pure data out: storage/events.py records what happened, ops/events.py delivers.
The payload follows ACR's webhook reference: `push` carries the target's size, length and tag;
`delete` (a manifest, or each manifest of a deleted repository) carries mediaType, digest and
repository only. Beyond ACR: `untag` (a tag deleted, its manifest stays; ACR sends nothing, and
a receiver that reads every `delete` as "manifest gone" must not see it), delivered only to
webhooks that ask for it; and a referrer's push carries its `artifactType` and `subject`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PUSH, DELETE, UNTAG, PING = "push", "delete", "untag", "ping"
ACTIONS = (PUSH, DELETE, UNTAG)
DEFAULT_ACTIONS = (PUSH, DELETE)  # ACR's
SCHEMAS = ("acr", "eventgrid", "cloudevents")
EVENT_TYPES = {PUSH: "Microsoft.ContainerRegistry.ImagePushed", DELETE: "Microsoft.ContainerRegistry.ImageDeleted",
               UNTAG: "Berth.Registry.ImageUntagged", PING: "Berth.Registry.Ping"}
# Every event id is derived from its record's id and tag, so a redelivery carries the same id.
_IDS = uuid.UUID("5d0c3b8e-4f5a-4d59-9a8f-2b1e6c7d9e10")
SIGNATURE_HEADER = "X-Berth-Signature-256"
TIMESTAMP_HEADER = "X-Berth-Timestamp"
DELIVERY_HEADER = "X-Berth-Delivery"


@dataclass(frozen=True)
class RequestInfo:
    """The request that caused an event (ACR's `request`), and who made it."""

    id: str
    host: str
    method: str
    useragent: str
    addr: str = ""
    actor: str = ""


@dataclass(frozen=True)
class EventRecord:
    """What one write did: one push (with any number of tags) or one delete."""

    id: str
    action: str
    repository: str
    digest: str
    media_type: str
    size: int | None
    timestamp: datetime
    request: RequestInfo
    tags: tuple[str, ...] = ()
    artifact_type: str | None = None
    subject: dict[str, Any] | None = field(default=None)

    def events(self) -> list[dict[str, Any]]:
        """ACR webhook payloads: one per tag pushed (a push by digest: one without a tag)."""
        return [self._payload(tag) for tag in self.tags] if self.tags else [self._payload(None)]

    def _payload(self, tag: str | None) -> dict[str, Any]:
        target: dict[str, Any] = {"mediaType": self.media_type}
        if self.action == PUSH and self.size is not None:
            target["size"] = self.size
        target["digest"] = self.digest
        if self.action == PUSH and self.size is not None:
            target["length"] = self.size
        target["repository"] = self.repository
        if tag is not None:
            target["tag"] = tag
        if self.artifact_type:
            target["artifactType"] = self.artifact_type
        if self.subject:
            target["subject"] = self.subject
        return {
            "id": str(uuid.uuid5(_IDS, f"{self.id}:{tag or ''}")),
            "timestamp": rfc3339(self.timestamp),
            "action": self.action,
            "target": target,
            "request": {"id": self.request.id, "host": self.request.host, "method": self.request.method,
                        "useragent": self.request.useragent},
        }


def ping_event(timestamp: datetime, host: str) -> dict[str, Any]:
    """The body of `webhook ping`: ACR's ping has an id, a timestamp and the action only."""
    return {"id": str(uuid.uuid4()), "timestamp": rfc3339(timestamp), "action": PING,
            "request": {"id": str(uuid.uuid4()), "host": host, "method": "POST", "useragent": "berth-webhook-ping"}}


def rfc3339(time: datetime) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def subject_of(event: dict[str, Any]) -> str:
    """Event Grid's and CloudEvents' subject: `repository:tag`, or `repository@digest`."""
    target = event.get("target") or {}
    if "tag" in target:
        return f"{target['repository']}:{target['tag']}"
    if "repository" in target:
        return f"{target['repository']}@{target.get('digest', '')}"
    return ""


def envelope(event: dict[str, Any], schema: str, source: str) -> tuple[Any, str]:
    """The body a subscriber with this schema gets, and its content type.

    `eventgrid`: Event Grid's own schema, an array of one (what a topic's `/api/events` takes);
    `cloudevents`: a structured CloudEvents 1.0 event; `acr`: the webhook payload itself.
    """
    event_type = EVENT_TYPES[event["action"]]
    data = {**event, "request": {**event.get("request", {})}}
    if schema == "eventgrid":
        return [{"id": event["id"], "subject": subject_of(event), "eventType": event_type,
                 "eventTime": event["timestamp"], "data": data, "dataVersion": "1.0"}], "application/json"
    if schema == "cloudevents":
        return ({"specversion": "1.0", "type": event_type, "source": source, "id": event["id"],
                 "time": event["timestamp"], "subject": subject_of(event), "datacontenttype": "application/json",
                 "data": data}, "application/cloudevents+json")
    return event, "application/json"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: a receiver recomputes it with the
    shared secret, and refuses an old timestamp, so a captured delivery cannot be replayed later."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def retry_delay(attempt: int, base: float, cap: float = 3600.0, jitter: float = 0.2,
                rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): base doubling each time, capped,
    spread by +-jitter so receivers that come back are not hit by every retry at once."""
    delay = min(base * 2 ** (attempt - 1), cap)
    return delay * (1 + jitter * (2 * (rng or random).random() - 1))


@dataclass(frozen=True)
class Scope:
    """ACR's webhook scope: `repository:tag`, each part with `*` for any characters; a bare
    `repository` means `repository:latest`; empty means every event. An event without a tag
    (a push by digest, a manifest delete) matches a scope whose tag part is `*`."""

    repository: re.Pattern[str] | None
    tag: re.Pattern[str] | None
    tag_is_any: bool

    def matches(self, repository: str, tag: str | None) -> bool:
        if self.repository is None:
            return True
        if not self.repository.fullmatch(repository):
            return False
        return self.tag_is_any if tag is None else bool(self.tag is not None and self.tag.fullmatch(tag))


_SCOPE_PART = re.compile(r"[a-z0-9._/*-]+")
_TAG_PART = re.compile(r"[A-Za-z0-9._*-]+")


@functools.lru_cache(maxsize=1024)  # every event meets every webhook's scope: compile each once
def parse_scope(text: str) -> Scope:
    """Raises ValueError for anything but `repository[:tag]` made of name characters and `*`."""
    text = text.strip()
    if not text:
        return Scope(None, None, True)
    repository, _, tag = text.partition(":")
    tag = tag or "latest"
    if not _SCOPE_PART.fullmatch(repository) or not _TAG_PART.fullmatch(tag) or len(text) > 512:
        raise ValueError(f"{text[:100]!r} is not a scope: repository[:tag], with * for any characters")
    return Scope(_glob(repository), _glob(tag), tag == "*")


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))
