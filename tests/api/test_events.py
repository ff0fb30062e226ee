"""Events: every acknowledged push and delete reaches each webhook at least once, in ACR's schema,
across instances and crashes; failing receivers are retried with backoff, then dead-lettered.

Its own tables, container and queue (webhooks are registry-wide). Two instances: `recorder`
takes the writes and delivers nothing (BERTH_EVENTS_WORKER=false), `worker` delivers; so every
delivery here crossed instances. The receiver is a real HTTP server on loopback.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.azurite import PROJECT_ROOT, Azurite, free_port
from tests.conftest import Server, require_tool, start_server, stop_server
from tests.helpers import OCI_EMPTY, OCI_MANIFEST, descriptor, push_blob, push_image, put_manifest, sha256

PREFIX = "berthevt"
SETTINGS = {
    "BERTH_TABLE_PREFIX": PREFIX, "BERTH_BLOB_CONTAINER": PREFIX,
    "BERTH_WEBHOOKS_TTL_SECONDS": "0",  # a webhook made by the test is seen by the next push
    "BERTH_EVENT_LOOK_AFTER_SECONDS": "1",
    "BERTH_EVENT_SWEEP_SECONDS": "1", "BERTH_EVENT_SWEEP_AGE_SECONDS": "2",
    "BERTH_WEBHOOK_BACKOFF_SECONDS": "1", "BERTH_WEBHOOK_ATTEMPTS": "4", "BERTH_WEBHOOK_TIMEOUT_SECONDS": "3",
    "BERTH_WEBHOOK_PRIVATE_HOSTS": "127.0.0.1",
}
SECRET = "a-shared-secret-for-the-signature"
# What the instances' environment holds for the webhooks' env: references.
REFERENCED = {"HOOK_SECRET": SECRET, "HOOK_TOKEN": "Bearer t0ken"}
# ACR's webhook reference: the exact members of a push and a delete payload.
PUSH_TARGET = {"mediaType", "size", "digest", "length", "repository", "tag"}
DELETE_TARGET = {"mediaType", "digest", "repository"}
REQUEST = {"id", "host", "method", "useragent"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers POST /<name>/<behaviour>: `ok` 200; `fail3` 500 for an event's first 3 attempts,
    then 200; `down` 500 always; `redirect` 302 to /<name>/ok."""

    url: str
    received: list[Received] = field(default_factory=list)
    attempts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [item for item in self.received if item.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.at(path)) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(self.at(path))} of {count} deliveries after {timeout} s")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                state.received.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                key = (self.path, self.headers.get("X-Berth-Delivery", ""))
                state.attempts[key] += 1
                attempt = state.attempts[key]
            behaviour = self.path.rsplit("/", 1)[-1]
            status = {"ok": 200, "down": 500, "redirect": 302}.get(behaviour, 500 if attempt <= 3 else 200)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", self.path.rsplit("/", 1)[0] + "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pair(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("events")
    started: list[Server] = []
    try:
        started.append(start_server(azurite, tmp, BERTH_EVENTS_WORKER="false", **SETTINGS))
        started.append(start_server(azurite, tmp, BERTH_EVENTS_WORKER="true", **SETTINGS, **REFERENCED))
        yield started[0], started[1]
    finally:
        for instance in started:
            stop_server(instance)


@pytest.fixture
def recorder(pair: tuple[Server, Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pair[0].url, timeout=30) as client:
        yield client


def cli(azurite: Azurite, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, **SETTINGS, **(env or {})})


def webhook(azurite: Azurite, receiver: Receiver, behaviour: str, *options: str,
            env: dict[str, str] | None = None) -> tuple[str, str, str]:
    """A webhook for a repository of its own: (name, repository, the path it POSTs to)."""
    name = "hook" + uuid.uuid4().hex[:10]
    repository = f"evt/{uuid.uuid4().hex[:10]}"
    path = f"/{name}/{behaviour}"
    made = cli(azurite, "webhook", "create", name, "--uri", receiver.url + path, "--scope", f"{repository}:*",
               *options, env=env)
    assert made.returncode == 0, made.stderr
    return name, repository, path


def deliveries(azurite: Azurite, name: str) -> list[dict[str, Any]]:
    shown = cli(azurite, "webhook", "events", name, "--top", "100", "--output", "json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_pushes_and_deletes_reach_the_webhook_in_acrs_schema(azurite: Azurite, receiver: Receiver,
                                                             recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "ok", "--actions", "push", "delete", "untag")
    _, _, acr_path = webhook(azurite, receiver, "ok")  # ACR's actions only, the default
    digest, body = push_image(recorder, repo, "v1")
    assert put_manifest(recorder, repo, "v2", body).status_code == 201  # the same manifest, a second tag
    other, _ = push_image(recorder, repo, "other", layers=2)
    assert put_manifest(recorder, repo, other, _manifest_of(recorder, repo, other)).status_code == 201  # by digest
    assert recorder.delete(f"/acr/v1/{repo}/_tags/v2").status_code == 202
    assert recorder.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202

    events = {_key(item.event): item.event for item in receiver.wait_for(path, 6)}
    pushed = events[("push", digest, "v1")]
    assert set(pushed) == {"id", "timestamp", "action", "target", "request"}
    assert set(pushed["target"]) == PUSH_TARGET and set(pushed["request"]) == REQUEST
    assert pushed["target"] == {"mediaType": OCI_MANIFEST, "size": len(body), "digest": digest, "length": len(body),
                                "repository": repo, "tag": "v1"}
    assert pushed["request"]["method"] == "PUT" and pushed["request"]["useragent"].startswith("python-httpx")
    assert pushed["request"]["host"] == recorder.base_url.netloc.decode()
    assert pushed["timestamp"].endswith("Z")
    assert events[("push", digest, "v2")]["id"] != pushed["id"]
    assert set(events[("push", other, None)]["target"]) == PUSH_TARGET - {"tag"}  # pushed by digest
    untagged = events[("untag", digest, "v2")]  # a tag delete: beyond ACR, for webhooks that ask
    assert untagged["target"] == {"mediaType": OCI_MANIFEST, "digest": digest, "repository": repo, "tag": "v2"}
    deleted = events[("delete", digest, None)]
    assert set(deleted["target"]) == DELETE_TARGET and deleted["request"]["method"] == "DELETE"
    assert all(item.headers["Content-Type"] == "application/json" for item in receiver.at(path))
    time.sleep(1.5)  # nothing further arrives: each event once, as no delivery failed
    assert len(receiver.at(path)) == 6
    assert receiver.at(acr_path) == []
    logged = deliveries(azurite, name)
    assert len(logged) == 6 and {entry["outcome"] for entry in logged} == {"delivered"}
    assert {entry["status"] for entry in logged} == {200}


def test_a_default_webhook_gets_no_untag(azurite: Azurite, receiver: Receiver, recorder: httpx.Client) -> None:
    _, repo, path = webhook(azurite, receiver, "ok")  # push and delete, as ACR
    digest, body = push_image(recorder, repo, "v1")
    assert put_manifest(recorder, repo, "v2", body).status_code == 201
    assert recorder.delete(f"/acr/v1/{repo}/_tags/v2").status_code == 202
    assert recorder.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    arrived = receiver.wait_for(path, 3)
    time.sleep(1.5)
    assert sorted(_key(item.event) for item in receiver.at(path)) == sorted(_key(item.event) for item in arrived)
    assert sorted((a, t) for a, _, t in (_key(item.event) for item in arrived)) == [
        ("delete", None), ("push", "v1"), ("push", "v2")]


def test_repository_delete_sends_a_delete_per_manifest(azurite: Azurite, receiver: Receiver,
                                                       recorder: httpx.Client) -> None:
    _, repo, path = webhook(azurite, receiver, "ok", "--actions", "delete")
    first, _ = push_image(recorder, repo, "a")
    second, _ = push_image(recorder, repo, "b", layers=2)
    assert recorder.delete(f"/acr/v1/{repo}").status_code == 202
    events = [item.event for item in receiver.wait_for(path, 2)]
    assert sorted(event["target"]["digest"] for event in events) == sorted([first, second])
    assert {event["action"] for event in events} == {"delete"}  # the pushes were not asked for


def test_scope_and_disabled_webhooks_filter_events(azurite: Azurite, receiver: Receiver,
                                                   recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "ok")
    tagged = cli(azurite, "webhook", "update", name, "--scope", f"{repo}:release-*")
    assert tagged.returncode == 0, tagged.stderr
    push_image(recorder, repo, "dev-1")
    push_image(recorder, repo, "release-1", layers=2)
    [event] = [item.event for item in receiver.wait_for(path, 1)]
    assert event["target"]["tag"] == "release-1"
    assert cli(azurite, "webhook", "update", name, "--status", "disabled").returncode == 0
    push_image(recorder, repo, "release-2", layers=3)
    time.sleep(3)
    assert len(receiver.at(path)) == 1


def test_a_referrer_push_by_oras_carries_artifact_type_and_subject(azurite: Azurite, receiver: Receiver,
                                                                   pair: tuple[Server, Server], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import oras.client
    import oras.oci

    _, repo, path = webhook(azurite, receiver, "ok", "--actions", "push")
    recorder = pair[0]
    monkeypatch.chdir(tmp_path)  # oras-py refuses files outside the working directory
    Path("sbom.json").write_text('{"packages": []}')
    Path("app.txt").write_text("app")
    client = oras.client.OrasClient(hostname=recorder.host, insecure=True)
    client.push(target=f"{recorder.host}/{repo}:app", files=["app.txt"])
    subject_body = httpx.get(f"{recorder.url}/v2/{repo}/manifests/app", headers={"Accept": OCI_MANIFEST}).content
    subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=sha256(subject_body), size=len(subject_body))
    # oras-py's push has no artifactType: the config's media type is the referrer's artifactType.
    client.push(target=f"{recorder.host}/{repo}:sbom", files=["sbom.json"], subject=subject,
                manifest_config="no-config-file:application/spdx+json")
    events = {item.event["target"]["tag"]: item.event for item in receiver.wait_for(path, 2)}
    assert "artifactType" not in events["app"]["target"]
    referrer = events["sbom"]["target"]
    assert referrer["artifactType"] == "application/spdx+json"
    assert referrer["subject"] == {"mediaType": OCI_MANIFEST, "digest": sha256(subject_body),
                                   "size": len(subject_body)}


def test_a_skopeo_push_reaches_the_webhook(azurite: Azurite, receiver: Receiver, pair: tuple[Server, Server],
                                           tmp_path: Path) -> None:
    from tests.clients.layouts import image_layout, manifest_digest

    skopeo = require_tool("skopeo")
    _, repo, path = webhook(azurite, receiver, "ok")
    image_layout(tmp_path / "src", "v1")
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{tmp_path / 'src'}:v1",
                    f"docker://{pair[0].host}/{repo}:v1"], check=True, capture_output=True, timeout=120)
    [event] = [item.event for item in receiver.wait_for(path, 1)]
    assert event["action"] == "push" and event["target"]["tag"] == "v1"
    assert event["target"]["digest"] == manifest_digest(tmp_path / "src", "v1")
    assert event["request"]["useragent"].startswith("skopeo")


def test_a_failing_receiver_gets_the_event_on_a_retry_with_backoff(azurite: Azurite, receiver: Receiver,
                                                                   recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "fail3")
    push_image(recorder, repo, "v1")
    arrivals = receiver.wait_for(path, 4, timeout=40)
    assert len({item.event["id"] for item in arrivals}) == 1  # one event, four attempts
    gaps = [later.at - earlier.at for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    # BERTH_WEBHOOK_BACKOFF_SECONDS=1: about 1, 2 and 4 s (+-20 %), however the queue rounds them.
    assert gaps[0] >= 0.5 and gaps[1] >= 1.5 and gaps[2] >= 3, gaps
    logged = deliveries(azurite, name)
    assert [entry["outcome"] for entry in logged] == ["delivered", "retrying", "retrying", "retrying"]
    assert [entry["attempt"] for entry in logged] == [4, 3, 2, 1]
    assert [entry["status"] for entry in logged] == [200, 500, 500, 500]


def test_a_receiver_that_always_fails_ends_in_the_dead_letter(azurite: Azurite, receiver: Receiver,
                                                              recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "down")
    digest, _ = push_image(recorder, repo, "v1")
    receiver.wait_for(path, 4, timeout=40)
    deadline = time.monotonic() + 10
    while (logged := deliveries(azurite, name))[0]["outcome"] != "dead-lettered" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logged[0]["outcome"] == "dead-lettered" and logged[0]["attempt"] == 4
    assert logged[0]["error"] == "HTTP 500"
    table = cli(azurite, "webhook", "events", name)
    assert "dead-lettered" in table.stdout and f"{repo}:v1" in table.stdout
    time.sleep(2)
    assert len(receiver.at(path)) == 4  # BERTH_WEBHOOK_ATTEMPTS, no more
    assert digest


def test_redirects_are_not_followed(azurite: Azurite, receiver: Receiver, recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "redirect")
    push_image(recorder, repo, "v1")
    receiver.wait_for(path, 1)
    time.sleep(1)
    assert receiver.at(path.replace("redirect", "ok")) == []
    assert deliveries(azurite, name)[-1]["error"] == "redirects are not followed"


def test_signature_headers_and_cloudevents(azurite: Azurite, receiver: Receiver, recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "ok", "--schema", "cloudevents", "--secret", "env:HOOK_SECRET",
                               "--header", "Authorization=env:HOOK_TOKEN", "--header", "X-Team=platform")
    digest, _ = push_image(recorder, repo, "v1")
    [item] = receiver.wait_for(path, 1)
    # References are read where the event is delivered: in the worker instance's environment.
    assert item.headers["Authorization"] == "Bearer t0ken" and item.headers["X-Team"] == "platform"
    timestamp = item.headers["X-Berth-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + item.body, hashlib.sha256).hexdigest()
    assert item.headers["X-Berth-Signature-256"] == f"sha256={expected}"
    assert abs(int(timestamp) - time.time()) < 60
    shown = json.loads(cli(azurite, "webhook", "show", name).stdout)
    assert shown["customHeaders"] == {"Authorization": "env:HOOK_TOKEN", "X-Team": "***"}
    cloud = item.event
    assert item.headers["Content-Type"] == "application/cloudevents+json"
    assert cloud["specversion"] == "1.0" and cloud["type"] == "Microsoft.ContainerRegistry.ImagePushed"
    assert cloud["subject"] == f"{repo}:v1" and cloud["data"]["target"]["digest"] == digest
    assert cloud["id"] == cloud["data"]["id"] == item.headers["X-Berth-Delivery"]


def test_a_secret_that_cannot_be_read_fails_the_delivery_and_says_why(azurite: Azurite, receiver: Receiver,
                                                                       recorder: httpx.Client) -> None:
    name, repo, path = webhook(azurite, receiver, "ok", "--secret", "env:BERTH_TEST_NOT_SET")
    push_image(recorder, repo, "v1")
    deadline = time.monotonic() + 30
    while not (logged := deliveries(azurite, name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logged[-1]["outcome"] == "retrying"
    assert "BERTH_TEST_NOT_SET is not set" in logged[-1]["error"] and SECRET not in json.dumps(logged)
    assert receiver.at(path) == []  # nothing unsigned went out


def test_webhook_ping_and_refusals(azurite: Azurite, receiver: Receiver) -> None:
    name, _, path = webhook(azurite, receiver, "ok")
    pinged = cli(azurite, "webhook", "ping", name)
    assert pinged.returncode == 0, pinged.stderr
    assert json.loads(pinged.stdout)["statusCode"] == 200
    assert receiver.wait_for(path, 1)[0].event["action"] == "ping"
    # Not on the allow-list: refused when it is made.
    refused = cli(azurite, "webhook", "create", "hookrefused", "--uri", receiver.url + "/x/ok",
                  env={"BERTH_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com"})
    assert refused.returncode == 2 and "BERTH_WEBHOOK_ALLOWED_HOSTS" in refused.stderr
    assert cli(azurite, "webhook", "create", "hookcreds", "--uri", "http://user:pw@127.0.0.1/").returncode == 2
    # A private address without BERTH_WEBHOOK_PRIVATE_HOSTS: the guard refuses to connect.
    unguarded = cli(azurite, "webhook", "ping", name, env={"BERTH_WEBHOOK_PRIVATE_HOSTS": ""})
    assert unguarded.returncode == 1 and "private address" in json.loads(unguarded.stdout)["error"]
    assert len(receiver.at(path)) == 1


def test_no_event_is_lost_when_the_instance_dies_after_the_write(azurite: Azurite, receiver: Receiver,
                                                                 pair: tuple[Server, Server],
                                                                 tmp_path: Path) -> None:
    """20 rounds: an instance that records the event, sends no queue message and exits the moment
    the write is durable (the client sees the connection drop). The sweep on the other instance
    delivers every event; each round's manifest is there."""
    _, repo, path = webhook(azurite, receiver, "ok")
    digests = []
    with httpx.Client(base_url=pair[0].url, timeout=30) as client:
        layers = [push_blob(client, repo, os.urandom(64)) for _ in range(20)]
        config = b"{}"
        push_blob(client, repo, config)
    for round_number in range(20):
        crashing = start_server(azurite, tmp_path, BERTH_EVENTS_WORKER="false", BERTH_TEST_EVENT_FAULT="crash",
                                **SETTINGS)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_EMPTY, config),
                           "layers": [{"mediaType": "application/octet-stream", "digest": layers[round_number],
                                       "size": 64}]}).encode()
        try:
            with httpx.Client(base_url=crashing.url, timeout=30) as client:
                with pytest.raises(httpx.TransportError):
                    put_manifest(client, repo, f"r{round_number}", body)
            assert crashing.process.wait(timeout=10) == 137
        finally:
            stop_server(crashing)
        digests.append(sha256(body))
    arrived = receiver.wait_for(path, 20, timeout=60)
    by_tag = {item.event["target"]["tag"]: item.event["target"]["digest"] for item in arrived}
    assert by_tag == {f"r{number}": digest for number, digest in enumerate(digests)}
    with httpx.Client(base_url=pair[1].url, timeout=30) as client:
        assert client.head(f"/v2/{repo}/manifests/r19").status_code == 200


def _key(event: dict[str, Any]) -> tuple[str, str, str | None]:
    return event["action"], event["target"]["digest"], event["target"].get("tag")


def _manifest_of(client: httpx.Client, repo: str, digest: str) -> bytes:
    return client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}).content


def test_every_event_is_published_to_the_event_grid_topic(azurite: Azurite, receiver: Receiver,
                                                          tmp_path: Path) -> None:
    """BERTH_EVENTGRID_TOPIC_ENDPOINT: every write, no webhook needed, in Event Grid's schema, with
    the topic's access key from its reference (on Azure: the managed identity's token instead)."""
    settings = {**SETTINGS, "BERTH_TABLE_PREFIX": "berthegt", "BERTH_BLOB_CONTAINER": "berthegt",
                "BERTH_EVENTGRID_TOPIC_ENDPOINT": receiver.url + "/eventgrid/ok",
                "BERTH_EVENTGRID_KEY": "env:TOPIC_KEY", "TOPIC_KEY": "k3y",
                "BERTH_EVENTGRID_ALLOW_HTTP": "true",  # a loopback topic: no TLS here
                "BERTH_EVENTS_WORKER": "true"}
    instance = start_server(azurite, tmp_path, **settings)
    try:
        with httpx.Client(base_url=instance.url, timeout=30) as client:
            digest, body = push_image(client, "grid/app", "v1")
            assert put_manifest(client, "grid/app", "v2", body).status_code == 201
            assert client.delete("/acr/v1/grid/app/_tags/v2").status_code == 202  # untag: not for Event Grid
            assert client.delete(f"/v2/grid/app/manifests/{digest}").status_code == 202
        arrived = receiver.wait_for("/eventgrid/ok", 3)
        time.sleep(1)
        assert len(receiver.at("/eventgrid/ok")) == 3
    finally:
        stop_server(instance)
    published = {(item.event[0]["eventType"], item.event[0]["subject"]): (item.event, item.headers)
                 for item in arrived}
    assert {event_type for event_type, _ in published} == {"Microsoft.ContainerRegistry.ImagePushed",
                                                           "Microsoft.ContainerRegistry.ImageDeleted"}
    published = {event_type: value for (event_type, subject), value in published.items() if subject != "grid/app:v2"}
    [pushed], headers = published["Microsoft.ContainerRegistry.ImagePushed"]
    assert headers["aeg-sas-key"] == "k3y" and headers["Content-Type"] == "application/json"
    assert pushed["subject"] == "grid/app:v1" and pushed["dataVersion"] == "1.0"
    assert pushed["data"]["target"] == {"mediaType": OCI_MANIFEST, "size": len(body), "digest": digest,
                                        "length": len(body), "repository": "grid/app", "tag": "v1"}
    [deleted], _ = published["Microsoft.ContainerRegistry.ImageDeleted"]
    assert deleted["data"]["target"]["digest"] == digest and deleted["data"]["action"] == "delete"


def test_an_oversized_artifact_type_neither_fails_the_push_nor_the_event(azurite: Azurite, receiver: Receiver,
                                                                        recorder: httpx.Client) -> None:
    """A manifest may carry an artifactType of any length; the event leaves it out."""
    _, repo, path = webhook(azurite, receiver, "ok")
    config = b"{}"
    push_blob(recorder, repo, config)
    for artifact_type in ("application/x." + "a" * 40000, "application/x." + "\u00e9" * 12000):
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                           "config": descriptor(OCI_EMPTY, config), "layers": [],
                           "annotations": {"n": uuid.uuid4().hex}}).encode()
        assert put_manifest(recorder, repo, f"t{len(artifact_type)}", body).status_code == 201
    arrived = receiver.wait_for(path, 2)
    assert all("artifactType" not in item.event["target"] for item in arrived)


def test_pushes_succeed_with_the_queue_down_and_the_sweep_delivers(azurite: Azurite, receiver: Receiver,
                                                                  tmp_path: Path) -> None:
    """The queue unreachable from the instance that takes the push: the push is answered within
    the announcement's bound, and the sweep of another instance delivers the event."""
    _, repo, path = webhook(azurite, receiver, "ok")
    dead = azurite.connection_string.replace(f":{azurite.queue_port}/", f":{free_port()}/")
    assert dead != azurite.connection_string
    instance = start_server(azurite, tmp_path, BERTH_EVENTS_WORKER="false", BERTH_STORAGE_CONNECTION_STRING=dead,
                            BERTH_STORAGE_TIMEOUT_SECONDS="2", **SETTINGS)
    try:
        with httpx.Client(base_url=instance.url, timeout=30) as client:
            started = time.monotonic()
            digest, _ = push_image(client, repo, "v1")
            pushed_in = time.monotonic() - started
    finally:
        stop_server(instance)
    [item] = receiver.wait_for(path, 1, timeout=30)
    assert item.event["target"]["digest"] == digest
    assert pushed_in < 15, pushed_in  # a blob POST or two and the manifest PUT; no queue timeout per request


def test_a_secret_with_a_line_break_is_not_sent(azurite: Azurite, receiver: Receiver, recorder: httpx.Client,
                                                tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("t0ken\r\nX-Injected: 1\n")
    name, repo, path = webhook(azurite, receiver, "ok", "--header", f"Authorization=file:{secret}")
    push_image(recorder, repo, "v1")
    deadline = time.monotonic() + 30
    while not (logged := deliveries(azurite, name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logged[-1]["outcome"] == "retrying" and "line break" in logged[-1]["error"]
    assert receiver.at(path) == []
    reserved = cli(azurite, "webhook", "create", "hookreserved", "--uri", receiver.url + "/r/ok",
                   "--header", "Transfer-Encoding=chunked")
    assert reserved.returncode == 2 and "Transfer-Encoding" in reserved.stderr
