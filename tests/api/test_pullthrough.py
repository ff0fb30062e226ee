"""The pull-through cache: cache rules, manifests and blobs fetched from a real upstream (the
CNCF registry on loopback) when first pulled, by skopeo and over plain HTTP, once per blob even
when three instances are asked at once, and tags asked upstream again after their TTL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving
from tests.api.test_import import Pushed
from tests.conftest import CONTAINER, TABLE_PREFIX, Server, require_tool, start_server, stop_server
from tests.helpers import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, descriptor, error_codes, sha256

UPSTREAM_CONFIG = """version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


class Upstream:
    def __init__(self, host: str, log: Path):
        self.host = host
        self.log = log

    def gets(self, path_part: str) -> int:
        """How many GETs of URIs containing `path_part` the upstream logged."""
        text = self.log.read_text(errors="replace")
        return len(re.findall(rf'http\.request\.method=GET http\.request\.remoteaddr=\S+ '
                              rf'http\.request\.uri="[^"]*{re.escape(path_part)}', text))


@contextmanager
def cncf_registry() -> Iterator[tuple[Upstream, subprocess.Popen[bytes]]]:
    """The CNCF registry on loopback, logging every request."""
    binary = require_tool("docker-registry")
    with tempfile.TemporaryDirectory(prefix="berth-pt-upstream-") as work:
        port = free_port()
        config = Path(work) / "config.yml"
        config.write_text(UPSTREAM_CONFIG.format(root=Path(work) / "data", port=port))
        log = Path(work) / "log"
        with log.open("wb") as out:
            process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/v2/", process, "docker-registry")
            yield Upstream(f"127.0.0.1:{port}", log), process
        finally:
            stop_process(process)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with cncf_registry() as (running, _):
        yield running


def cli(azurite: Azurite, *args: str, private_hosts: str = "127.0.0.1",
        prefix: str = TABLE_PREFIX) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "BERTH_BLOB_CONTAINER": prefix if prefix != TABLE_PREFIX else CONTAINER, "BERTH_TABLE_PREFIX": prefix,
           "BERTH_UPSTREAM_PRIVATE_HOSTS": private_hosts}
    return subprocess.run([sys.executable, "-m", "registry", "cache", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def rule(azurite: Azurite, upstream: Upstream) -> Iterator[str]:
    """A rule mirroring the upstream's `team/*` as `pt<random>/*`; the target prefix."""
    prefix = f"pt{os.urandom(4).hex()}"
    name = f"rule-{prefix}"
    made = cli(azurite, "create", name, "-s", f"http://{upstream.host}/team/*", "-t", f"{prefix}/*")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {"name": name, "sourceRepository": f"http://{upstream.host}/team/*",
                                       "targetRepository": f"{prefix}/*", "credentialSetName": None,
                                       "createdTime": json.loads(made.stdout)["createdTime"]}
    yield prefix
    assert cli(azurite, "delete", name).returncode == 0


def test_skopeo_pulls_every_platform_through_the_cache_once(upstream: Upstream, rule: str, server: Server,
                                                            tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    with httpx.Client(base_url=f"http://{upstream.host}", timeout=30) as http:
        image = Pushed(http, "team/app", "1.0")
    for round_ in range(2):
        out = tmp_path / f"copy{round_}"
        copied = subprocess.run([skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                                 f"docker://{server.host}/{rule}/app:1.0", f"oci:{out}:app"],
                                capture_output=True, text=True, timeout=300)
        assert copied.returncode == 0, copied.stderr
        index = json.loads((out / "index.json").read_text())
        assert index["manifests"][0]["digest"] == image.digest
        for digest, blob in image.blobs.items():
            assert (out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == blob
    # Each blob came from upstream once: the second copy was served from this registry.
    for digest in image.blobs:
        assert upstream.gets(f"/v2/team/app/blobs/{digest}") == 1, digest
    with httpx.Client(base_url=server.url, timeout=30) as http:
        image.pulls_from(http, f"{rule}/app", "1.0")  # and it is stored like a pushed image
        assert http.get(f"/v2/{rule}/app/tags/list").json()["tags"] == ["1.0"]


def test_three_instances_asked_at_once_fetch_each_blob_once(upstream: Upstream, rule: str,
                                                           instances: list[Server]) -> None:
    with httpx.Client(base_url=f"http://{upstream.host}", timeout=30) as http:
        image = Pushed(http, "team/wide", "v1")
    digest = next(iter(image.blobs))
    barrier = threading.Barrier(9)
    answers: list[tuple[int, bytes]] = []

    def pull(index: int) -> None:
        with httpx.Client(base_url=instances[index % 3].url, timeout=60) as http:
            barrier.wait()
            got = http.get(f"/v2/{rule}/wide/blobs/{digest}", follow_redirects=True)
            answers.append((got.status_code, got.content))

    workers = [threading.Thread(target=pull, args=(i,)) for i in range(9)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [status for status, _ in answers] == [200] * 9
    assert all(content == image.blobs[digest] for _, content in answers)
    assert upstream.gets(f"/v2/team/wide/blobs/{digest}") == 1


def test_a_head_of_a_blob_not_here_yet_downloads_nothing(upstream: Upstream, rule: str, server: Server) -> None:
    """Clients check blobs with HEAD (skopeo before a copy, containerd): upstream's HEAD answers."""
    with httpx.Client(base_url=f"http://{upstream.host}", timeout=30) as http:
        image = Pushed(http, "team/headed", "v1")
    digest, blob = next(iter(image.blobs.items()))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        head = http.head(f"/v2/{rule}/headed/blobs/{digest}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(blob))
        assert head.headers["docker-content-digest"] == digest
        assert upstream.gets(f"/v2/team/headed/blobs/{digest}") == 0
        missing = http.head(f"/v2/{rule}/headed/blobs/{sha256(b'not upstream either')}")
        assert missing.status_code == 404
        assert http.get(f"/v2/{rule}/headed/blobs/{digest}", follow_redirects=True).content == blob
    assert upstream.gets(f"/v2/team/headed/blobs/{digest}") == 1


def test_what_upstream_does_not_have_is_not_found(rule: str, server: Server, upstream: Upstream) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        missing = http.get(f"/v2/{rule}/nothing/manifests/1")
        assert missing.status_code == 404 and error_codes(missing) == ["MANIFEST_UNKNOWN"]
        blob = http.get(f"/v2/{rule}/nothing/blobs/{sha256(b'never pushed')}")
        assert blob.status_code == 404 and error_codes(blob) == ["BLOB_UNKNOWN"]
        uncovered = http.get(f"/v2/{rule}x/app/manifests/1.0")  # no rule covers it: never asked upstream
        assert uncovered.status_code == 404
    assert upstream.gets("/v2/team/x/app") == 0


def test_rules_are_checked(azurite: Azurite) -> None:
    for source, target in (("team/*", "mirror/*"), ("docker.io/library/*", "library"),
                           ("docker.io/library/nginx", "Bad/Name")):
        refused = cli(azurite, "create", "bad-rule", "-s", source, "-t", target)
        assert refused.returncode == 2 and refused.stderr.startswith("berth: "), (source, target)
    assert cli(azurite, "show", "no-such-rule").returncode == 1
    # A rule may not point at a private address unless the registry's settings allow that host.
    for source in ("http://127.0.0.1:5000/team/*", "http://169.254.169.254/x/*", "http://[::1]:5000/x/*",
                   "http://localhost:5000/x/*"):
        refused = cli(azurite, "create", "private-rule", "-s", source, "-t", "mirror/*", private_hosts="")
        assert refused.returncode == 1 and "private address" in refused.stderr, (source, refused.stderr)


class MovingUpstream(BaseHTTPRequestHandler):
    """An upstream whose tag `v` names `current`; stopped to show the cache serving on."""

    images: dict[str, bytes] = {}
    current = ""
    heads = 0

    def do_HEAD(self) -> None:  # noqa: N802
        type(self).heads += 1
        self._manifest(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._manifest(head=False)

    def _manifest(self, head: bool) -> None:
        cls = type(self)
        reference = self.path.rsplit("/", 1)[1]
        body = cls.images.get(cls.current if reference == "v" else reference)
        if not self.path.startswith("/v2/moving/manifests/") or body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Content-Digest", sha256(body))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def short_ttl_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(azurite, tmp_path_factory.mktemp("pt-ttl"), BERTH_CACHE_TAG_TTL_SECONDS="2")
    yield instance
    stop_server(instance)


def test_a_tag_is_asked_again_after_its_ttl_and_served_when_upstream_is_down(
        azurite: Azurite, short_ttl_server: Server) -> None:
    def image(n: int) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor(OCI_CONFIG, f'{{"n":{n}}}'.encode()),
                           "layers": [descriptor(OCI_LAYER, os.urandom(10))]}).encode()

    first, second = image(1), image(2)
    MovingUpstream.images = {sha256(first): first, sha256(second): second}
    MovingUpstream.current, MovingUpstream.heads = sha256(first), 0
    fake = ThreadingHTTPServer(("127.0.0.1", 0), MovingUpstream)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    prefix = f"mv{os.urandom(4).hex()}"
    assert cli(azurite, "create", f"rule-{prefix}", "-s", f"http://127.0.0.1:{fake.server_address[1]}/moving",
               "-t", f"{prefix}/moving").returncode == 0
    try:
        with httpx.Client(base_url=short_ttl_server.url, timeout=30) as http:
            def current() -> str:
                got = http.get(f"/v2/{prefix}/moving/manifests/v", headers={"Accept": OCI_MANIFEST})
                assert got.status_code == 200, got.text
                return got.headers["Docker-Content-Digest"]

            assert current() == sha256(first)
            assert current() == sha256(first) and MovingUpstream.heads == 0  # within the TTL: not asked
            time.sleep(2.5)
            assert current() == sha256(first) and MovingUpstream.heads == 1  # asked (HEAD): unchanged
            assert current() == sha256(first) and MovingUpstream.heads == 1  # and that answer counts a TTL
            MovingUpstream.current = sha256(second)
            time.sleep(2.5)
            assert current() == sha256(second) and MovingUpstream.heads == 2  # asked, and it moved
            fake.shutdown()
            fake.server_close()
            time.sleep(2.5)
            assert current() == sha256(second)  # upstream is gone: the cached tag is served
            # A tag a user pushes into a cached repository is theirs: the cache never moves it.
            config = b'{"os":"linux"}'
            layer = os.urandom(50)
            for blob in (config, layer):
                assert http.post(f"/v2/{prefix}/moving/blobs/uploads/", params={"digest": sha256(blob)},
                                 content=blob).status_code == 201
            mine = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                               "layers": [descriptor(OCI_LAYER, layer)]}).encode()
            assert http.put(f"/v2/{prefix}/moving/manifests/v", content=mine,
                            headers={"Content-Type": OCI_MANIFEST}).status_code == 201
            time.sleep(2.5)
            assert current() == sha256(mine)
            index = http.get(f"/v2/{prefix}/moving/manifests/v", headers={"Accept": OCI_INDEX})
            assert index.status_code == 404  # an OCI manifest is not an index: Accept still rules
    finally:
        assert cli(azurite, "delete", f"rule-{prefix}").returncode == 0


def test_cached_images_pull_with_the_upstream_stopped(azurite: Azurite, server: Server, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    prefix = f"off{os.urandom(4).hex()}"
    with cncf_registry() as (gone, process):
        with httpx.Client(base_url=f"http://{gone.host}", timeout=30) as http:
            image = Pushed(http, "team/app", "2.0")
        assert cli(azurite, "create", f"rule-{prefix}", "-s", f"http://{gone.host}/team/*",
                   "-t", f"{prefix}/*").returncode == 0
        reference = f"docker://{server.host}/{prefix}/app:2.0"
        first = subprocess.run([skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                                reference, f"oci:{tmp_path / 'warm'}:app"], capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        stop_process(process)
        try:
            again = subprocess.run([skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                                    reference, f"oci:{tmp_path / 'cold'}:app"], capture_output=True, text=True,
                                   timeout=300)
            assert again.returncode == 0, again.stderr
            assert json.loads((tmp_path / "cold" / "index.json").read_text())["manifests"][0]["digest"] == image.digest
        finally:
            assert cli(azurite, "delete", f"rule-{prefix}").returncode == 0


def test_an_upstream_that_lies_gets_nothing_cached(azurite: Azurite, server: Server) -> None:
    from tests.api.test_import import LyingUpstream

    LyingUpstream.throttled, LyingUpstream.requested = True, []  # no 429 this time
    fake = ThreadingHTTPServer(("127.0.0.1", 0), LyingUpstream)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    prefix = f"lie{os.urandom(4).hex()}"
    assert cli(azurite, "create", f"rule-{prefix}", "-s", f"http://127.0.0.1:{fake.server_address[1]}/lies",
               "-t", f"{prefix}/lies").returncode == 0
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            bad = http.get(f"/v2/{prefix}/lies/manifests/bad", headers={"Accept": OCI_MANIFEST})
            assert bad.status_code == 502 and "nothing was stored" in bad.text  # announced digest is not the body's
            good = http.get(f"/v2/{prefix}/lies/manifests/good", headers={"Accept": OCI_MANIFEST})
            assert good.status_code == 200 and good.content == LyingUpstream.manifest
            layer = sha256(LyingUpstream.layer)
            head = http.head(f"/v2/{prefix}/lies/blobs/{layer}")  # upstream's HEAD answers it: nothing fetched
            assert head.status_code == 200 and head.headers["content-length"] == str(len(LyingUpstream.layer))
            assert f"/v2/lies/blobs/{layer}" not in LyingUpstream.requested  # (a GET would be listed)
            for _ in range(2):  # nothing was cached: asked again, and refused again
                LyingUpstream.requested = []
                # A GET gets the bytes as they arrive, all but the last: its response is cut short.
                with pytest.raises(httpx.RemoteProtocolError):
                    http.get(f"/v2/{prefix}/lies/blobs/{layer}")
                assert f"/v2/lies/blobs/{layer}" in LyingUpstream.requested
            with pytest.raises(httpx.RemoteProtocolError):  # still not stored: fetched (and refused) again
                http.get(f"/v2/{prefix}/lies/blobs/{layer}")
    finally:
        fake.shutdown()
        fake.server_close()
        assert cli(azurite, "delete", f"rule-{prefix}").returncode == 0


HTPASSWD_CONFIG = UPSTREAM_CONFIG + """auth:
  htpasswd:
    realm: upstream
    path: {htpasswd}
"""


@pytest.fixture(scope="module")
def htpasswd_upstream() -> Iterator[str]:
    """The CNCF registry with htpasswd Basic auth (user `puller`, password `s3cret`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through libxcrypt; the module is gone after Python 3.12

    binary = require_tool("docker-registry")
    with tempfile.TemporaryDirectory(prefix="berth-pt-htpasswd-") as work:
        htpasswd = Path(work) / "htpasswd"
        htpasswd.write_text(f"puller:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
        port = free_port()
        config = Path(work) / "config.yml"
        config.write_text(HTPASSWD_CONFIG.format(root=Path(work) / "data", port=port, htpasswd=htpasswd))
        with (Path(work) / "log").open("wb") as out:
            process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/v2/", process, "docker-registry")
            yield f"127.0.0.1:{port}"
        finally:
            stop_process(process)


def test_an_upstream_with_htpasswd_through_import_and_the_cache(azurite: Azurite, htpasswd_upstream: str,
                                                                server: Server, repo: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=f"http://{htpasswd_upstream}", timeout=30, auth=("puller", "s3cret")) as http:
        assert httpx.get(f"http://{htpasswd_upstream}/v2/").status_code == 401  # it does ask
        image = Pushed(http, "team/locked", "1")
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "BERTH_BLOB_CONTAINER": CONTAINER, "BERTH_TABLE_PREFIX": TABLE_PREFIX}

    def berth(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "registry", *args], cwd=PROJECT_ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=300)

    source = f"http://{htpasswd_upstream}/team/locked:1"
    imported = berth("import", "--source", source, "--image", f"{repo}:1", "-u", "puller", "--password-stdin",
                     stdin="s3cret\n")
    assert imported.returncode == 0, imported.stderr
    name = f"htp-{os.urandom(3).hex()}"
    secret = tmp_path / "puller-password"  # read by the serving instances, which have no PULLER_PASSWORD
    secret.write_text("s3cret\n")
    assert berth("credential-set", "create", name, "-l", htpasswd_upstream, "-u", "puller",
                 "-p", f"file:{secret}").returncode == 0
    prefix = f"htp{os.urandom(4).hex()}"
    assert cli(azurite, "create", f"rule-{prefix}", "-s", f"http://{htpasswd_upstream}/team/*", "-t", f"{prefix}/*",
               "-c", name).returncode == 0
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            image.pulls_from(http, repo, "1")
            image.pulls_from(http, f"{prefix}/locked", "1")  # through the cache, logged in with the set
    finally:
        assert cli(azurite, "delete", f"rule-{prefix}").returncode == 0
        assert berth("credential-set", "delete", name).returncode == 0


def test_short_names_like_docker_hubs(azurite: Azurite, upstream: Upstream,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A `*` target covers every one-part name: `<registry>/tiny` is upstream's `library/tiny`.
    Its own tables, since such a rule covers every one-part repository of the registry."""
    with httpx.Client(base_url=f"http://{upstream.host}", timeout=30) as http:
        image = Pushed(http, "library/tiny", "1")
    own = "berthshort"
    assert cli(azurite, "create", "hub-short", "-s", f"http://{upstream.host}/library/*", "-t", "*",
               prefix=own).returncode == 0
    instance = start_server(azurite, tmp_path_factory.mktemp("short"), BERTH_TABLE_PREFIX=own,
                            BERTH_BLOB_CONTAINER=own)
    try:
        with httpx.Client(base_url=instance.url, timeout=60) as http:
            image.pulls_from(http, "tiny", "1")
            assert http.get("/v2/team/tiny/manifests/1").status_code == 404  # two parts: not covered
    finally:
        stop_server(instance)
