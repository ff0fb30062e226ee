"""function_app.py as the Functions host would call it: Starlette requests in, responses out."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import os
import sys
from typing import Any

import pytest
from starlette.requests import Request

from registry.azurite import Azurite
from tests.conftest import CONTAINER, TABLE_PREFIX


@pytest.fixture
def function_module(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("BERTH_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("BERTH_BLOB_CONTAINER", CONTAINER)
    monkeypatch.setenv("BERTH_TABLE_PREFIX", TABLE_PREFIX)
    sys.modules.pop("function_app", None)
    return importlib.import_module("function_app")


def test_declares_anonymous_catch_all_routes(function_module: Any) -> None:
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in function_module.app.get_functions()}
    binding = functions["distribution_api"]["bindings"][0]
    assert binding["route"] == "v2/{*path}"
    assert binding["authLevel"] == "ANONYMOUS"
    assert {m.upper() for m in binding["methods"]} >= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    acr = functions["acr_metadata_api"]["bindings"][0]
    assert acr["route"] == "acr/v1/{*path}" and acr["authLevel"] == "ANONYMOUS"
    assert {m.upper() for m in acr["methods"]} >= {"GET", "DELETE", "PATCH", "POST"}  # POST: /acr/v1/<name>/_import
    tokens = functions["token_service"]["bindings"][0]
    assert tokens["route"] == "oauth2/{*path}" and tokens["authLevel"] == "ANONYMOUS"
    health = functions["health"]["bindings"][0]
    assert health["route"] == "health/{*path}" and health["authLevel"] == "ANONYMOUS"
    timer = functions["purge_expired_uploads"]["bindings"][0]
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "0 17 * * * *"
    collector = functions["collect_garbage"]["bindings"][0]
    assert collector["type"] == "timerTrigger" and collector["schedule"] == "0 29 3 * * *"
    retention = functions["apply_retention"]["bindings"][0]  # daily, before the collection
    assert retention["type"] == "timerTrigger" and retention["schedule"] == "0 5 3 * * *"
    events = functions["deliver_events"]["bindings"][0]  # the queue the app's outbox writes to
    assert events["type"] == "queueTrigger" and events["queueName"] == "%BERTH_EVENTS_QUEUE%"
    assert events["connection"] == "BERTH_EVENTS"
    sweep = functions["sweep_events"]["bindings"][0]
    assert sweep["type"] == "timerTrigger" and sweep["schedule"] == "0 * * * * *"
    with open(os.path.join(os.path.dirname(function_module.__file__), "host.json")) as host:
        extensions = json.load(host)["extensions"]
        assert extensions["http"]["routePrefix"] == ""
        assert extensions["queues"]["messageEncoding"] == "base64"  # as EventQueue.send encodes


def test_events_flow_through_the_queue_trigger(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push through the HTTP function announces its event; the queue trigger, fed what the host
    would hand it (the message's decoded bytes), delivers it to a webhook."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import azure.functions as func
    from azure.storage.queue import QueueClient

    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    for key, value in {"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, "BERTH_BLOB_CONTAINER": "berthfn",
                       "BERTH_TABLE_PREFIX": "berthfn", "BERTH_WEBHOOK_PRIVATE_HOSTS": "127.0.0.1",
                       "BERTH_EVENT_LOOK_AFTER_SECONDS": "0"}.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    queue = QueueClient.from_connection_string(azurite.connection_string, "berthfnevents")
    config = b"{}"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                      "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": 2},
                           "layers": []}).encode()

    async def scenario() -> None:
        from registry.storage.events import Webhook

        try:
            store = (await module.berth.context()).store
            await store.webhooks.create(Webhook("fnhook", f"http://127.0.0.1:{receiver.server_port}/"), ())
            status, _, _ = await call(module, "POST", "/v2/fn/events/blobs/uploads/", config,
                                      "digest=sha256:" + hashlib.sha256(config).hexdigest())
            assert status == 201
            status, headers, _ = await call(module, "PUT", "/v2/fn/events/manifests/v1", manifest, "",
                                            {"content-type": "application/vnd.oci.image.manifest.v1+json"})
            assert status == 201
            for _ in range(50):  # the host's part: take each message, decode it, call the function
                for message in queue.receive_messages(max_messages=16, visibility_timeout=30):
                    body = base64.b64decode(message.content)
                    await module.deliver_events(func.QueueMessage(body=body))
                    queue.delete_message(message)
                if received:
                    break
                await asyncio.sleep(0.2)
            assert [event["target"]["tag"] for event in received] == ["v1"]
            assert received[0]["target"]["digest"] == headers["docker-content-digest"]
            await module.sweep_events(None)
            from datetime import timedelta
            # Nothing left to hand on: the intent is settled (the sweep forgets it minutes later).
            assert {intent.settled async for intent in store.events.intents(timedelta(0))} == {"handed-on"}
        finally:
            await module.berth.close()
            receiver.shutdown()

    asyncio.run(scenario())


async def call(function_module: Any, method: str, path: str, body: bytes = b"", query: str = "",
               headers: dict[str, str] | None = None,
               function: str = "distribution_api") -> tuple[int, dict[str, str], bytes]:
    """Send one request through the function and collect the streamed response."""
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "headers": raw_headers, "http_version": "1.1",
             "scheme": "http", "server": ("berth.test", 443), "root_path": ""}
    response = await getattr(function_module, function)(Request(scope, receive))
    sent: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            sent["body"] += message.get("body", b"")

    await response(scope, receive, send)
    return sent["status"], sent["headers"], sent["body"]


def test_push_and_pull_through_the_function(function_module: Any) -> None:
    layer = os.urandom(300_000)
    config = b'{"architecture":"amd64","os":"linux"}'

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        try:
            status, headers, _ = await call(function_module, "GET", "/v2/")
            assert status == 200 and headers["docker-distribution-api-version"] == "registry/2.0"
            for blob in (layer, config):
                status, _, body = await call(function_module, "POST", "/v2/fn/app/blobs/uploads/", blob,
                                             f"digest={digest(blob)}", {"content-length": str(len(blob))})
                assert status == 201, body
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                            "size": len(layer)}],
            }).encode()
            status, headers, _ = await call(function_module, "PUT", "/v2/fn/app/manifests/v1", manifest, "",
                                            {"content-type": "application/vnd.oci.image.manifest.v1+json"})
            assert status == 201 and headers["docker-content-digest"] == digest(manifest)
            status, headers, body = await call(function_module, "GET", "/v2/fn/app/manifests/v1")
            assert status == 200 and body == manifest
            status, _, body = await call(function_module, "GET", "/acr/v1/fn/app/_tags", function="acr_metadata_api")
            assert status == 200 and [t["name"] for t in json.loads(body)["tags"]] == ["v1"]
            status, headers, _ = await call(function_module, "GET", f"/v2/fn/app/blobs/{digest(layer)}")
            assert status == 307 and "sig=" in headers["location"]
            status, _, body = await call(function_module, "GET", "/v2/fn/app/blobs/sha256:abc")
            assert status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
            for probe, expected in (("/health/live", "live"), ("/health/ready", "ready")):
                status, _, body = await call(function_module, "GET", probe, function="health")
                assert status == 200 and json.loads(body)["status"] == expected
        finally:
            await function_module.berth.close()

    asyncio.run(scenario())


def test_token_flow_through_the_functions(function_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("BERTH_AUTH", "token")
    monkeypatch.setenv("BERTH_TOKEN_SIGNING_KEY", base64.b64encode(b"f" * 32).decode())
    monkeypatch.setenv("BERTH_ADMIN_USER", "admin")
    monkeypatch.setenv("BERTH_ADMIN_PASSWORD", "secret")
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    host = {"host": "berth.example.net", "x-forwarded-proto": "https"}

    async def scenario() -> None:
        try:
            status, headers, _ = await call(module, "GET", "/v2/", headers=host)
            assert status == 401
            assert headers["www-authenticate"] == (
                'Bearer realm="https://berth.example.net/oauth2/token",service="berth.example.net"'
            )
            basic = "Basic " + base64.b64encode(b"admin:secret").decode()
            status, _, body = await call(module, "GET", "/oauth2/token", query="service=berth.example.net",
                                         headers={**host, "authorization": basic}, function="token_service")
            assert status == 200, body
            token = json.loads(body)["token"]
            status, _, _ = await call(module, "GET", "/v2/", headers={**host, "authorization": f"Bearer {token}"})
            assert status == 200
        finally:
            await module.berth.close()

    asyncio.run(scenario())


def test_wrong_settings_keep_the_functions_and_answer_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token auth without a signing key (the shipped parameters once did this): the functions are
    still indexed, every request answers 503 with a generic message, the log names the setting."""
    monkeypatch.setenv("BERTH_AUTH", "token")
    monkeypatch.delenv("BERTH_TOKEN_SIGNING_KEY", raising=False)
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    try:
        names = {f.get_function_name() for f in module.app.get_functions()}
        assert {"distribution_api", "token_service", "health", "collect_garbage", "apply_retention"} <= names
        assert "BERTH_TOKEN_SIGNING_KEY" in module.berth.reason
        for function, path in (("distribution_api", "/v2/"), ("health", "/health/ready")):
            status, headers, body = asyncio.run(call(module, "GET", path, function=function))
            error = json.loads(body)["errors"][0]
            assert status == 503 and headers["retry-after"] == "300" and error["code"] == "UNAVAILABLE"
            assert "misconfigured" in error["message"] and "SIGNING" not in error["message"]
        with pytest.raises(RuntimeError, match="BERTH_TOKEN_SIGNING_KEY"):
            asyncio.run(module.berth.collect_garbage())
    finally:
        sys.modules.pop("function_app", None)
