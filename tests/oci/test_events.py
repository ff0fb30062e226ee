"""The event domain: payload shapes, envelopes, scopes, signatures and the retry schedule."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.oci.events import (
    EventRecord,
    RequestInfo,
    envelope,
    parse_scope,
    retry_delay,
    signature,
)

REQUEST = RequestInfo("3cbb6949-7549-4fa1-86cd-a6d5451dffc7", "myregistry.example", "PUT", "docker/27.0")
DIGEST = "sha256:" + "a" * 64


def record(action: str = "push", tags: tuple[str, ...] = ("v1",), **extra: object) -> EventRecord:
    return EventRecord("rec1", action, "hello-world", DIGEST, "application/vnd.oci.image.manifest.v1+json",
                       524 if action == "push" else None, datetime(2026, 11, 25, 16, 52, 1, 343145, UTC), REQUEST,
                       tags, **extra)  # type: ignore[arg-type]


def test_a_push_payload_has_exactly_acrs_members() -> None:
    [event] = record().events()
    assert event == {
        "id": event["id"], "timestamp": "2026-11-25T16:52:01.343145Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 524, "digest": DIGEST,
                   "length": 524, "repository": "hello-world", "tag": "v1"},
        "request": {"id": REQUEST.id, "host": "myregistry.example", "method": "PUT", "useragent": "docker/27.0"},
    }
    assert list(event["target"]) == ["mediaType", "size", "digest", "length", "repository", "tag"]  # ACR's order


def test_a_delete_payload_has_exactly_acrs_members() -> None:
    [event] = record("delete", ()).events()
    assert event["target"] == {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST,
                               "repository": "hello-world"}


def test_one_event_per_tag_with_stable_ids() -> None:
    events = record(tags=("a", "b")).events()
    assert [event["target"]["tag"] for event in events] == ["a", "b"]
    assert events[0]["id"] != events[1]["id"]
    assert [event["id"] for event in record(tags=("a", "b")).events()] == [event["id"] for event in events]
    assert "tag" not in record(tags=()).events()[0]["target"]


def test_a_referrer_carries_artifact_type_and_subject() -> None:
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST, "size": 7}
    [event] = record(artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json", subject=subject).events()
    assert event["target"]["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json"
    assert event["target"]["subject"] == subject


def test_envelopes() -> None:
    [event] = record().events()
    [grid], grid_type = envelope(event, "eventgrid", "https://r.example")
    assert grid_type == "application/json"
    assert grid["eventType"] == "Microsoft.ContainerRegistry.ImagePushed" and grid["subject"] == "hello-world:v1"
    assert grid["data"] == event and grid["eventTime"] == event["timestamp"] and grid["dataVersion"] == "1.0"
    assert "topic" not in grid  # Event Grid sets it
    cloud, cloud_type = envelope(event, "cloudevents", "https://r.example")
    assert cloud_type == "application/cloudevents+json"
    assert {cloud[k] for k in ("specversion", "source", "id")} == {"1.0", "https://r.example", event["id"]}
    [deleted] = record("delete", ()).events()
    assert envelope(deleted, "eventgrid", "s")[0][0]["eventType"] == "Microsoft.ContainerRegistry.ImageDeleted"
    assert envelope(deleted, "cloudevents", "s")[0]["subject"] == f"hello-world@{DIGEST}"
    assert envelope(event, "acr", "s") == (event, "application/json")


@pytest.mark.parametrize(("scope", "repository", "tag", "expected"), [
    ("", "any/thing", None, True),
    ("hello-world:*", "hello-world", "v1", True),
    ("hello-world:*", "hello-world", None, True),
    ("hello-world", "hello-world", "latest", True),  # ACR: a bare repository means :latest
    ("hello-world", "hello-world", "v1", False),
    ("hello-world", "hello-world", None, False),
    ("team/*:*", "team/app/web", "v1", True),
    ("team/*:*", "teams/app", "v1", False),
    ("*:release-*", "x", "release-1", True),
    ("*:release-*", "x", "dev", False),
    ("a.b:v1", "aXb", "v1", False),  # a dot is a dot, not any character
])
def test_scopes(scope: str, repository: str, tag: str | None, expected: bool) -> None:
    assert parse_scope(scope).matches(repository, tag) is expected


@pytest.mark.parametrize("scope", ["Upper:case", "a:b:c", "a b", "a:v\n1", "a:(.*)"])
def test_scopes_that_are_refused(scope: str) -> None:
    with pytest.raises(ValueError):
        parse_scope(scope)


def test_the_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"id":"x"}'
    expected = hmac.new(b"secret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("secret", "1700000000", body) == f"sha256={expected}"
    assert signature("secret", "1700000001", body) != signature("secret", "1700000000", body)


@given(st.integers(min_value=1, max_value=40), st.floats(min_value=0.1, max_value=100), st.integers())
def test_retry_delays_double_within_the_jitter_and_stop_at_the_cap(attempt: int, base: float, seed: int) -> None:
    delay = retry_delay(attempt, base, cap=3600, jitter=0.2, rng=random.Random(seed))
    nominal = min(base * 2 ** (attempt - 1), 3600)
    assert nominal * 0.8 <= delay <= nominal * 1.2
