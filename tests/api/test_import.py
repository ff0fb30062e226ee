"""Import from other registries (`python -m registry import`, POST /acr/v1/<name>/_import), from
real upstreams on loopback: the CNCF registry (anonymous), a Berth with token auth (Bearer
realm, Basic credentials, the referrers API), and a small upstream that lies and throttles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, access_token, bearer
from tests.conftest import CONTAINER, TABLE_PREFIX, Server, require_tool, start_server, stop_server
from tests.helpers import OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, descriptor, error_codes, sha256

CNCF_CONFIG = """version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


@pytest.fixture(scope="module")
def cncf() -> Iterator[str]:
    """The CNCF reference registry on loopback; its host:port."""
    binary = require_tool("docker-registry")
    with tempfile.TemporaryDirectory(prefix="berth-upstream-") as work:
        port = free_port()
        config = Path(work) / "config.yml"
        config.write_text(CNCF_CONFIG.format(root=Path(work) / "data", port=port))
        with (Path(work) / "log").open("wb") as log:
            process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/v2/", process, "docker-registry")
            yield f"127.0.0.1:{port}"
        finally:
            stop_process(process)


def upload(http: httpx.Client, repository: str, data: bytes) -> str:
    """POST then PUT, as every registry takes a blob."""
    started = http.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["Location"]  # keeps its own query (the CNCF registry's _state)
    done = http.put(f"{location}{'&' if '?' in location else '?'}digest={sha256(data)}", content=data,
                    headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    return sha256(data)


def put(http: httpx.Client, repository: str, reference: str, body: bytes, media_type: str) -> None:
    response = http.put(f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type})
    assert response.status_code == 201, response.text


class Pushed:
    """A two-platform image pushed upstream: its index, children and blobs by digest."""

    def __init__(self, http: httpx.Client, repository: str, tag: str):
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        children = []
        for arch in ("amd64", "arm64"):
            config = json.dumps({"architecture": arch, "os": "linux", "n": os.urandom(4).hex()}).encode()
            layer = os.urandom(3000)
            for blob in (config, layer):
                self.blobs[upload(http, repository, blob)] = blob
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": descriptor(OCI_CONFIG, config),
                               "layers": [descriptor(OCI_LAYER, layer)]}).encode()
            put(http, repository, sha256(body), body, OCI_MANIFEST)
            self.manifests[sha256(body)] = body
            children.append({"mediaType": OCI_MANIFEST, "digest": sha256(body), "size": len(body),
                             "platform": {"architecture": arch, "os": "linux"}})
        self.index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
        put(http, repository, tag, self.index, OCI_INDEX)
        self.digest = sha256(self.index)
        self.children = [child["digest"] for child in children]

    def pulls_from(self, http: httpx.Client, repository: str, tag: str) -> None:
        got = http.get(f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_INDEX})
        assert got.status_code == 200 and got.content == self.index
        for digest, body in self.manifests.items():
            child = http.get(f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
            assert child.status_code == 200 and child.content == body
        for digest, blob in self.blobs.items():
            got = http.get(f"/v2/{repository}/blobs/{digest}", follow_redirects=True)
            assert got.status_code == 200 and got.content == blob


def berth_import(azurite: Azurite, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "BERTH_BLOB_CONTAINER": CONTAINER, "BERTH_TABLE_PREFIX": TABLE_PREFIX}
    return subprocess.run([sys.executable, "-m", "registry", "import", *args], cwd=PROJECT_ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=300)


def test_every_platform_from_the_cncf_registry_and_again_for_nothing(
        azurite: Azurite, cncf: str, client: httpx.Client, repo: str) -> None:
    with httpx.Client(base_url=f"http://{cncf}", timeout=30) as upstream:
        image = Pushed(upstream, "team/app", "1.0")
    first = berth_import(azurite, "--source", f"http://{cncf}/team/app:1.0", "--image", f"{repo}:1.0")
    assert first.returncode == 0, first.stderr
    assert "3 manifests (0 referrers), 4 blobs copied" in first.stdout
    image.pulls_from(client, repo, "1.0")
    # Repeated: the repository has it all, so nothing is fetched again.
    again = berth_import(azurite, "--source", f"http://{cncf}/team/app:1.0", "--image", f"{repo}:1.0")
    assert again.returncode == 0 and "0 blobs copied (0 bytes)" in again.stdout, again.stdout
    # Into another repository: the bytes are linked from the first one, not downloaded.
    other = f"{repo}-copy"
    linked = berth_import(azurite, "--source", f"http://{cncf}/team/app@{image.digest}", "--image", f"{other}:x")
    assert linked.returncode == 0 and "0 blobs copied (0 bytes), 4 linked" in linked.stdout, linked.stdout
    image.pulls_from(client, other, "x")


def test_one_platform_and_force(azurite: Azurite, cncf: str, client: httpx.Client, repo: str) -> None:
    with httpx.Client(base_url=f"http://{cncf}", timeout=30) as upstream:
        image = Pushed(upstream, "team/one", "1.0")
        newer = Pushed(upstream, "team/one", "2.0")
    arm = berth_import(azurite, "--source", f"http://{cncf}/team/one:1.0", "--image", f"{repo}:arm",
                       "--platform", "linux/arm64")
    assert arm.returncode == 0, arm.stderr
    got = client.get(f"/v2/{repo}/manifests/arm", headers={"Accept": OCI_MANIFEST})
    assert got.headers["Docker-Content-Digest"] == image.children[1]
    assert client.head(f"/v2/{repo}/manifests/{image.children[0]}", headers={"Accept": OCI_MANIFEST}).status_code == 404
    refused = berth_import(azurite, "--source", f"http://{cncf}/team/one:2.0", "--image", f"{repo}:arm")
    assert refused.returncode == 1 and "exists" in refused.stderr and "--force" in refused.stderr
    moved = berth_import(azurite, "--source", f"http://{cncf}/team/one:2.0", "--image", f"{repo}:arm", "--force")
    assert moved.returncode == 0, moved.stderr
    newer.pulls_from(client, repo, "arm")
    missing = berth_import(azurite, "--source", f"http://{cncf}/team/one:9.9", "--image", f"{repo}:x")
    assert missing.returncode == 1 and "not found upstream" in missing.stderr
    bad = berth_import(azurite, "--source", "http://UPPER/case:1")
    assert bad.returncode == 2 and bad.stderr.startswith("berth: ")


def test_from_a_registry_with_token_auth_with_its_referrers(
        azurite: Azurite, auth_server: Server, client: httpx.Client, repo: str) -> None:
    source = f"up/{os.urandom(4).hex()}"
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{source}:pull,push")
    with httpx.Client(base_url=auth_server.url, timeout=30, headers=bearer(token)) as upstream:
        image = Pushed(upstream, source, "v1")
        empty, payload = b"{}", os.urandom(200)
        upload(upstream, source, empty)
        upload(upstream, source, payload)
        signature = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "artifactType": "application/vnd.cncf.notary.signature",
                                "config": descriptor(OCI_EMPTY, empty),
                                "layers": [descriptor("application/jose+json", payload)],
                                "subject": {"mediaType": OCI_INDEX, "digest": image.digest,
                                            "size": len(image.index)}}).encode()
        put(upstream, source, sha256(signature), signature, OCI_MANIFEST)
    reference = f"http://{auth_server.host}/{source}:v1"
    anonymous = berth_import(azurite, "--source", reference, "--image", f"{repo}:v1")
    assert anonymous.returncode == 1 and "refused" in anonymous.stderr, anonymous.stderr
    wrong = berth_import(azurite, "--source", reference, "--image", f"{repo}:v1", "--username", ADMIN_USER,
                         "--password-stdin", stdin="not-the-password\n")
    assert wrong.returncode == 1 and "refused" in wrong.stderr, wrong.stderr
    assert client.head(f"/v2/{repo}/manifests/v1").status_code == 404  # nothing half-imported is visible

    done = berth_import(azurite, "--source", reference, "--image", f"{repo}:v1", "--username", ADMIN_USER,
                        "--password-stdin", "--include-referrers", stdin=f"{ADMIN_PASSWORD}\n")
    assert done.returncode == 0, done.stderr
    assert "4 manifests (1 referrers)" in done.stdout, done.stdout
    image.pulls_from(client, repo, "v1")
    listed = client.get(f"/v2/{repo}/referrers/{image.digest}").json()["manifests"]
    assert [entry["digest"] for entry in listed] == [sha256(signature)]
    assert listed[0]["artifactType"] == "application/vnd.cncf.notary.signature"


class LyingUpstream(BaseHTTPRequestHandler):
    """Throttles the first manifest request (429, Retry-After: 1), then serves an image whose
    layer bytes are not the layer's digest, and a tag whose announced digest is not its body's."""

    layer = os.urandom(1000)
    config = b'{"os":"linux","architecture":"amd64"}'
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                           "layers": [descriptor(OCI_LAYER, layer)]}).encode()
    throttled = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        cls = type(self)
        if self.path == "/v2/":
            return self._send(200, b"{}", "application/json")
        if self.path.startswith("/v2/lies/manifests/"):
            if not cls.throttled:
                cls.throttled = True
                return self._send(429, b"{}", "application/json", {"Retry-After": "1"})
            announced = sha256(self.manifest) if self.path.endswith("/good") else sha256(b"something else")
            return self._send(200, self.manifest, OCI_MANIFEST, {"Docker-Content-Digest": announced})
        if self.path == f"/v2/lies/blobs/{sha256(self.config)}":
            return self._send(200, self.config, "application/octet-stream")
        if self.path == f"/v2/lies/blobs/{sha256(self.layer)}":  # same length, other bytes
            return self._send(200, bytes(b ^ 1 for b in self.layer), "application/octet-stream")
        return self._send(404, b"{}", "application/json")

    def _send(self, status: int, body: bytes, media_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": media_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def liar() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), LyingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_upstream_that_lies_gets_nothing_stored(azurite: Azurite, liar: str, client: httpx.Client,
                                                   repo: str) -> None:
    announced = berth_import(azurite, "--source", f"http://{liar}/lies:bad", "--image", f"{repo}:bad")
    assert announced.returncode == 1 and "nothing was stored" in announced.stderr, announced.stderr
    # The first answer was a 429: the import waited as told, then found the layer's bytes wrong.
    assert LyingUpstream.throttled
    corrupt = berth_import(azurite, "--source", f"http://{liar}/lies:good", "--image", f"{repo}:good")
    assert corrupt.returncode == 1 and "digest" in corrupt.stderr.lower(), corrupt.stderr
    assert client.head(f"/v2/{repo}/manifests/good").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{sha256(LyingUpstream.layer)}").status_code == 404


@pytest.fixture(scope="module")
def importing_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Berth whose import endpoint may reach 127.0.0.1 (the upstreams of these tests)."""
    instance = start_server(azurite, tmp_path_factory.mktemp("import"), BERTH_IMPORT_PRIVATE_HOSTS="127.0.0.1")
    yield instance
    stop_server(instance)


def test_the_http_endpoint(cncf: str, importing_server: Server, server: Server, repo: str) -> None:
    with httpx.Client(base_url=f"http://{cncf}", timeout=30) as upstream:
        image = Pushed(upstream, "team/http", "3.1")
    body = {"source": {"registryUri": f"http://{cncf}", "sourceImage": "team/http:3.1"},
            "targetTags": [f"{repo}:3.1", "latest"], "mode": "NoForce"}
    with httpx.Client(base_url=importing_server.url, timeout=120) as http:
        answer = http.post(f"/acr/v1/{repo}/_import", json=body)
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert document["digest"] == image.digest and document["tags"] == ["3.1", "latest"]
        assert document["manifests"] == 3 and document["blobsCopied"] == 4
        image.pulls_from(http, repo, "latest")
        for broken, code in (({"source": {}}, "UNSUPPORTED"), ({**body, "mode": "Sometimes"}, "UNSUPPORTED"),
                             ({**body, "targetTags": ["other/repo:1"]}, "UNSUPPORTED")):
            refused = http.post(f"/acr/v1/{repo}/_import", json=broken)
            assert refused.status_code == 400 and error_codes(refused) == [code], refused.text
        missing = http.post(f"/acr/v1/{repo}/_import",
                            json={**body, "source": {**body["source"], "sourceImage": "team/http:nope"}})
        assert missing.status_code == 404 and error_codes(missing) == ["MANIFEST_UNKNOWN"]
    # A registry that was not told otherwise refuses private addresses, by number or by name.
    port = cncf.split(":")[1]
    for registry in (f"http://{cncf}", f"http://localhost:{port}", "http://169.254.169.254"):
        forbidden = httpx.post(f"{server.url}/acr/v1/{repo}/_import", timeout=60,
                               json={**body, "source": {"registryUri": registry, "sourceImage": "team/http:3.1"}})
        assert forbidden.status_code == 403 and error_codes(forbidden) == ["DENIED"], (registry, forbidden.text)
        assert "private address" in forbidden.json()["errors"][0]["message"]

