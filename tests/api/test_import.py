"""Import from other registries (`python -m registry import`, POST /acr/v1/<name>/_import), from
real upstreams on loopback: the CNCF registry (anonymous), a Berth with token auth (Bearer
realm, Basic credentials, the referrers API), and a small upstream that lies and throttles.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import httpx
import pytest

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving
from registry.ops.upstream import GuardedConnector, UpstreamForbidden
from tests.auth.fake_entra import FakeEntra
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, access_token, auth_settings, bearer, create_scoped_token
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


def berth_import(azurite: Azurite, *args: str, stdin: str | None = None, command: str = "import",
                 extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "BERTH_BLOB_CONTAINER": CONTAINER, "BERTH_TABLE_PREFIX": TABLE_PREFIX, "UPSTREAM_PULL_PASSWORD": "s3cret",
           **(extra or {})}
    return subprocess.run([sys.executable, "-m", "registry", command, *args], cwd=PROJECT_ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=300)


def credential_set(azurite: Azurite, *args: str) -> subprocess.CompletedProcess[str]:
    return berth_import(azurite, *args, command="credential-set")


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


def test_cosign_signatures_kept_as_tags_come_along(azurite: Azurite, cncf: str, client: httpx.Client,
                                                   repo: str) -> None:
    """cosign without the referrers API stores a signature as the tag `sha256-<hex>.sig` (and
    `.att`, `.sbom`): --include-referrers copies those tags too; without it they stay behind."""
    source = f"team/signed{os.urandom(3).hex()}"
    with httpx.Client(base_url=f"http://{cncf}", timeout=30) as upstream:
        image = Pushed(upstream, source, "1.0")
        empty, payload = b"{}", json.dumps({"critical": {"image": {"docker-manifest-digest": image.digest}}}).encode()
        upload(upstream, source, empty)
        upload(upstream, source, payload)
        signature = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": descriptor("application/vnd.oci.image.config.v1+json", empty),
                                "layers": [descriptor("application/vnd.dev.cosign.simplesigning.v1+json", payload,
                                                      annotations={"dev.cosignproject.cosign/signature": "MEUC"})]
                                }).encode()
        sig_tag = f"sha256-{image.digest.split(':')[1]}.sig"
        put(upstream, source, sig_tag, signature, OCI_MANIFEST)
    plain = berth_import(azurite, "--source", f"http://{cncf}/{source}:1.0", "--image", f"{repo}:1.0")
    assert plain.returncode == 0, plain.stderr
    assert client.head(f"/v2/{repo}/manifests/{sig_tag}").status_code == 404
    done = berth_import(azurite, "--source", f"http://{cncf}/{source}:1.0", "--image", f"{repo}:1.0",
                        "--include-referrers")
    assert done.returncode == 0, done.stderr
    assert "(1 referrers)" in done.stdout, done.stdout
    copied = client.get(f"/v2/{repo}/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST})
    assert copied.status_code == 200 and copied.content == signature
    image.pulls_from(client, repo, "1.0")


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
    requested: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        cls = type(self)
        cls.requested.append(self.path)
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

    def do_HEAD(self) -> None:  # noqa: N802 (the length of a blob, as registries answer it)
        blobs = {f"/v2/lies/blobs/{sha256(blob)}": blob for blob in (self.config, self.layer)}
        body = blobs.get(self.path)
        self._send(200 if body is not None else 404, body or b"", "application/octet-stream", head=True)

    def _send(self, status: int, body: bytes, media_type: str, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": media_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
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
    LyingUpstream.throttled, LyingUpstream.requested = False, []
    # The first answer is a 429: the import waits as told, asks again, and then finds that the
    # announced digest is not the body's.
    announced = berth_import(azurite, "--source", f"http://{liar}/lies:bad", "--image", f"{repo}:bad")
    assert announced.returncode == 1 and "nothing was stored" in announced.stderr, announced.stderr
    assert LyingUpstream.requested.count("/v2/lies/manifests/bad") == 2
    # A manifest that checks out, whose layer's bytes do not: the upload refuses them.
    corrupt = berth_import(azurite, "--source", f"http://{liar}/lies:good", "--image", f"{repo}:good")
    layer = sha256(LyingUpstream.layer)
    assert corrupt.returncode == 1 and f"not {layer}" in corrupt.stderr, corrupt.stderr
    assert f"/v2/lies/blobs/{layer}" in LyingUpstream.requested
    assert client.head(f"/v2/{repo}/manifests/good").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{layer}").status_code == 404


class BasicUpstream(BaseHTTPRequestHandler):
    """A registry with Basic auth whose blobs are served by a "CDN" on another host name
    (localhost instead of 127.0.0.1), which must never see the registry's credentials."""

    credentials = "Basic " + base64.b64encode(b"puller:s3cret").decode()
    layer = os.urandom(2000)
    config = b'{"os":"linux","architecture":"arm64"}'
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                           "layers": [descriptor(OCI_LAYER, layer)]}).encode()
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        cls.seen.append((self.path, self.headers.get("Authorization")))
        port = self.server.server_address[1]
        if self.path.startswith("/cdn/"):
            blob = {sha256(self.config): self.config, sha256(self.layer): self.layer}[self.path[len("/cdn/"):]]
            return LyingUpstream._send(self, 200, blob, "application/octet-stream")  # type: ignore[arg-type]
        if self.headers.get("Authorization") != self.credentials:
            return LyingUpstream._send(self, 401, b"{}", "application/json",  # type: ignore[arg-type]
                                       {"WWW-Authenticate": 'Basic realm="upstream"'})
        if self.path == "/v2/private/app/manifests/1":
            return LyingUpstream._send(self, 200, self.manifest, OCI_MANIFEST,  # type: ignore[arg-type]
                                       {"Docker-Content-Digest": sha256(self.manifest)})
        if self.path.startswith("/v2/private/app/blobs/"):
            return LyingUpstream._send(self, 307, b"", "text/plain",  # type: ignore[arg-type]
                                       {"Location": f"http://localhost:{port}/cdn/{self.path.rsplit('/', 1)[1]}"})
        return LyingUpstream._send(self, 404, b"{}", "application/json")  # type: ignore[arg-type]

    def log_message(self, *args: object) -> None:
        pass


def test_basic_auth_and_a_cdn_that_never_sees_the_credentials(azurite: Azurite, client: httpx.Client,
                                                               basic_upstream: str, repo: str) -> None:
    BasicUpstream.seen = []
    done = berth_import(azurite, "--source", f"http://{basic_upstream}/private/app:1", "--image", f"{repo}:1",
                        "--username", "puller", "--password-stdin", stdin="s3cret\n")
    assert done.returncode == 0, done.stderr
    cdn = [authorization for path, authorization in BasicUpstream.seen if path.startswith("/cdn/")]
    assert len(cdn) == 2 and cdn == [None, None]
    assert ("/v2/private/app/manifests/1", BasicUpstream.credentials) in BasicUpstream.seen
    got = client.get(f"/v2/{repo}/blobs/{sha256(BasicUpstream.layer)}", follow_redirects=True)
    assert got.status_code == 200 and got.content == BasicUpstream.layer


@pytest.fixture(scope="module")
def importing_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Berth whose import endpoint may reach 127.0.0.1 (the upstreams of these tests)."""
    instance = start_server(azurite, tmp_path_factory.mktemp("import"), BERTH_UPSTREAM_PRIVATE_HOSTS="127.0.0.1",
                            UPSTREAM_PULL_PASSWORD="s3cret")  # a credential set refers to it
    yield instance
    stop_server(instance)


@pytest.fixture(scope="module")
def guarded_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Berth as deployed: no private upstream allowed."""
    instance = start_server(azurite, tmp_path_factory.mktemp("guarded"), BERTH_UPSTREAM_PRIVATE_HOSTS="")
    yield instance
    stop_server(instance)


def test_the_http_endpoint(cncf: str, importing_server: Server, guarded_server: Server, repo: str) -> None:
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
    # A registry that was not told otherwise refuses private addresses, however they are spelt.
    port = cncf.split(":")[1]
    for registry in (f"http://{cncf}", f"http://localhost:{port}", "http://169.254.169.254",
                     f"http://[::ffff:127.0.0.1]:{port}", f"http://[::1]:{port}", "http://168.63.129.16"):
        forbidden = httpx.post(f"{guarded_server.url}/acr/v1/{repo}/_import", timeout=60,
                               json={**body, "source": {"registryUri": registry, "sourceImage": "team/http:3.1"}})
        assert forbidden.status_code == 403 and error_codes(forbidden) == ["DENIED"], (registry, forbidden.text)
        assert "private address" in forbidden.json()["errors"][0]["message"]

    unicode = httpx.post(f"{guarded_server.url}/acr/v1/{repo}/_import", timeout=60, json={
        **body, "source": {"registryUri": f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}",
                           "sourceImage": "team/http:3.1"}})  # full-width digits: not a registry name
    assert unicode.status_code == 400 and error_codes(unicode) == ["UNSUPPORTED"]


def test_the_guard_sees_every_spelling_of_an_address(cncf: str) -> None:
    """Where a redirect or token realm names the host, the connector checks the address aiohttp
    would connect to (Unicode digits are 127.0.0.1 to it), not the text."""
    port = cncf.split(":")[1]

    async def attempt(url: str) -> str:
        async with aiohttp.ClientSession(connector=GuardedConnector([])) as session:
            try:
                async with session.get(url) as response:
                    return f"connected: {response.status}"
            except UpstreamForbidden as refused:
                return refused.message

    for url in (f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/v2/", f"http://localhost:{port}/v2/",
                f"http://[::ffff:7f00:1]:{port}/v2/", f"http://0x7f.0.0.1:{port}/v2/"):
        outcome = asyncio.run(attempt(url))
        assert "private address" in outcome or "canonical" in outcome, (url, outcome)
    allowed = asyncio.run(_allowed_attempt(f"http://127.0.0.1:{port}/v2/"))
    assert allowed == 200


async def _allowed_attempt(url: str) -> int:
    async with aiohttp.ClientSession(connector=GuardedConnector(["127.0.0.1"])) as session, session.get(url) as got:
        return got.status


@pytest.fixture(scope="module")
def token_importing_server(azurite: Azurite, entra: FakeEntra,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = auth_settings(azurite, entra, BERTH_UPSTREAM_PRIVATE_HOSTS="127.0.0.1")
    instance = start_server(azurite, tmp_path_factory.mktemp("import-token"), **settings)
    yield instance
    stop_server(instance)


def test_an_import_over_http_never_links_blobs_the_caller_cannot_read(
        azurite: Azurite, cncf: str, token_importing_server: Server) -> None:
    """The bytes are already in a repository the CI token cannot read: its import fetches them
    from upstream (proving it has them) instead of linking the private copy."""
    with httpx.Client(base_url=f"http://{cncf}", timeout=30) as upstream:
        image = Pushed(upstream, "team/shared", "1")
    body = {"source": {"registryUri": f"http://{cncf}", "sourceImage": "team/shared:1"}, "targetTags": ["1"]}
    suffix = os.urandom(4).hex()
    secret, mine = f"secret/{suffix}", f"ci/{suffix}"
    admin = access_token(token_importing_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{secret}:pull,push")
    first = httpx.post(f"{token_importing_server.url}/acr/v1/{secret}/_import", json=body, headers=bearer(admin),
                       timeout=120)
    assert first.status_code == 200 and first.json()["blobsCopied"] == 4, first.text
    password = create_scoped_token(azurite, f"ci-{suffix}", f"{mine}=content/read,content/write")
    token = access_token(token_importing_server, f"ci-{suffix}", password, f"repository:{mine}:pull,push")
    refused = httpx.post(f"{token_importing_server.url}/acr/v1/{secret}/_import", json=body, headers=bearer(token),
                         timeout=60)
    assert refused.status_code == 401  # no push on the private repository
    answer = httpx.post(f"{token_importing_server.url}/acr/v1/{mine}/_import", json=body, headers=bearer(token),
                        timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["blobsMounted"] == 0 and answer.json()["blobsCopied"] == 4
    with httpx.Client(base_url=token_importing_server.url, timeout=30, headers=bearer(token)) as http:
        image.pulls_from(http, mine, "1")


@pytest.fixture
def basic_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BasicUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_credential_sets_keep_references_and_their_health(
        azurite: Azurite, basic_upstream: str, importing_server: Server, client: httpx.Client, repo: str,
        tmp_path: Path) -> None:
    name = f"up-{os.urandom(3).hex()}"
    plain = credential_set(azurite, "create", f"{name}-x", "-l", basic_upstream, "-u", "puller", "-p", "s3cret")
    assert plain.returncode == 2 and "reference" in plain.stderr  # a secret itself is never stored
    made = credential_set(azurite, "create", name, "-l", basic_upstream, "-u", "puller",
                          "-p", "env:UPSTREAM_PULL_PASSWORD")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["password"] == "env:UPSTREAM_PULL_PASSWORD" and "s3cret" not in made.stdout
    assert json.loads(made.stdout)["health"] == "unknown"

    done = berth_import(azurite, "--source", f"http://{basic_upstream}/private/app:1", "--image", f"{repo}:1",
                        "--credential-set", name)
    assert done.returncode == 0, done.stderr
    shown = json.loads(credential_set(azurite, "show", name).stdout)
    assert shown["health"] == "healthy" and shown["lastSuccess"] and shown["failure"] is None
    # Over HTTP: the pipeline names the set; the secret stays with the registry.
    answer = httpx.post(f"{importing_server.url}/acr/v1/{repo}/_import", timeout=120, json={
        "source": {"registryUri": f"http://{basic_upstream}", "sourceImage": "private/app:1",
                   "credentialSet": name}, "targetTags": ["2"]})
    assert answer.status_code == 200, answer.text
    assert client.get(f"/v2/{repo}/manifests/2").headers["Docker-Content-Digest"] == sha256(BasicUpstream.manifest)

    # A set is sent only to the registry it names, whoever asks.
    elsewhere = berth_import(azurite, "--source", f"http://localhost:{basic_upstream.split(':')[1]}/private/app:1",
                             "--image", f"{repo}:3", "--credential-set", name)
    assert elsewhere.returncode == 1 and "is for" in elsewhere.stderr
    # A wrong secret: the import fails and the set shows why.
    wrong = tmp_path / "password"
    wrong.write_text("not-it\n")
    stale = f"{name}-stale"
    assert credential_set(azurite, "create", stale, "-l", basic_upstream, "-u", "puller",
                          "-p", f"file:{wrong}").returncode == 0
    failed = berth_import(azurite, "--source", f"http://{basic_upstream}/private/app:1", "--image", f"{repo}:4",
                          "--credential-set", stale)
    assert failed.returncode == 1
    listed = {item["name"]: item for item in json.loads(credential_set(azurite, "list").stdout)}
    assert listed[stale]["health"] == "unhealthy" and "refused" in listed[stale]["failure"]
    assert listed[name]["health"] == "healthy"
    for gone in (name, stale):
        assert credential_set(azurite, "delete", gone).returncode == 0
    assert credential_set(azurite, "show", name).returncode == 1


class ManagedIdentityEndpoint(BaseHTTPRequestHandler):
    """The App Service managed-identity endpoint (IDENTITY_ENDPOINT, X-IDENTITY-HEADER), as
    azure-identity calls it; its tokens are the fake Entra's, which the upstream Berth validates."""

    entra: FakeEntra
    secret = "identity-header-secret"
    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(self.path).query)
        type(self).asked.append(query.get("resource", [""])[0])
        if self.headers.get("X-IDENTITY-HEADER") != self.secret:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"access_token": self.entra.token(["AcrPull"]), "expires_on": str(int(time.time()) + 3600),
                           "resource": query.get("resource", [""])[0], "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_managed_identity_logs_in_to_an_upstream_berth_without_a_secret(
        azurite: Azurite, auth_server: Server, entra: FakeEntra, client: httpx.Client, repo: str) -> None:
    """A credential set with --managed-identity: the app's identity gets an Entra token for the
    upstream's audience and exchanges it there (/oauth2/exchange) for a refresh token: no secret
    stored anywhere. The upstream is a Berth with token auth, validating Entra tokens for real."""
    source = f"up/{os.urandom(4).hex()}"
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{source}:pull,push")
    with httpx.Client(base_url=auth_server.url, timeout=30, headers=bearer(token)) as upstream:
        image = Pushed(upstream, source, "v1")
    ManagedIdentityEndpoint.entra, ManagedIdentityEndpoint.asked = entra, []
    identity = ThreadingHTTPServer(("127.0.0.1", 0), ManagedIdentityEndpoint)
    threading.Thread(target=identity.serve_forever, daemon=True).start()
    env = {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{identity.server_address[1]}/msi/token",
           "IDENTITY_HEADER": ManagedIdentityEndpoint.secret}
    name = f"mi-{os.urandom(3).hex()}"
    try:
        made = credential_set(azurite, "create", name, "-l", auth_server.host, "--managed-identity",
                              "--audience", "api://berth-registry")
        assert made.returncode == 0, made.stderr
        shown = json.loads(made.stdout)
        assert shown["username"] == "00000000-0000-0000-0000-000000000000"
        assert shown["password"] == "identity:api://berth-registry"  # what to ask for, no secret
        assert credential_set(azurite, "create", f"{name}-x", "-l", "other.example", "--managed-identity"
                              ).returncode == 2  # not ACR: the audience must be given
        done = berth_import(azurite, "--source", f"http://{auth_server.host}/{source}:v1", "--image", f"{repo}:v1",
                            "--credential-set", name, extra=env)
        assert done.returncode == 0, done.stderr
        assert ManagedIdentityEndpoint.asked == ["api://berth-registry"]
        image.pulls_from(client, repo, "v1")
        assert json.loads(credential_set(azurite, "show", name).stdout)["health"] == "healthy"
        # The upstream refuses a token without a pull role: the set shows why.
        ManagedIdentityEndpoint.entra = _NoRoles(entra)
        refused = berth_import(azurite, "--source", f"http://{auth_server.host}/{source}:v1", "--image",
                               f"{repo}:v2", "--credential-set", name, extra=env)
        assert refused.returncode == 1
    finally:
        identity.shutdown()
        identity.server_close()
        credential_set(azurite, "delete", name)


class _NoRoles:
    def __init__(self, entra: FakeEntra):
        self._entra = entra

    def token(self, roles: list[str] | None = None) -> str:
        return self._entra.token([])


def test_a_managed_identity_token_goes_only_over_https() -> None:
    """Plain http carries the token to nothing but this machine (a local test registry); the
    identity is not even asked for one. In-process: no connection is made anywhere."""
    from registry.ops.secrets import SecretReader, SecretUnavailable
    from registry.ops.upstream import parse_source
    from registry.storage.credential_sets import TOKEN_USER, CredentialSet

    asked: list[str] = []

    async def identity() -> object:
        asked.append("token")
        raise AssertionError("no token may be asked for")

    async def scenario() -> None:
        reader = SecretReader(None, identity)  # type: ignore[arg-type] (no session: nothing is sent)
        login = CredentialSet("mi", "registry.example", TOKEN_USER, "identity:api://berth-registry")
        with pytest.raises(SecretUnavailable, match="only over https"):
            await reader.login(login, parse_source("http://registry.example/team/app:1"))

    asyncio.run(scenario())
    assert asked == []
