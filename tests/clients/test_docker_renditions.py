"""Real clients behind a strict consumer that lets only Docker types through: renditions on,
they pull OCI images as Docker schema 2; off, the pull fails (as with the reference registry).

The strict consumer is nginx in front of Berth rewriting the Accept header of every manifest
request to Docker types only, as ACR over a private endpoint and some proxies effectively do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.azurite import Azurite
from tests.clients.layouts import image_layout, multiarch_layout, read_blob
from tests.conftest import Server, require_tool, start_server, stop_server
from tests.front import Front

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# Added to Front's http block: Docker types only in the Accept of manifest requests.
STRICT_ACCEPT = f"""map $uri $strict_accept {{
        ~^/v2/.+/manifests/ "{DOCKER_MANIFEST}, {DOCKER_LIST}";
        default $http_accept;
    }}
    upstream berth {{"""


class StrictFront(Front):
    """Front (tests/front.py) whose manifest requests reach Berth with a Docker-only Accept."""

    def _write_config(self) -> Path:
        config = super()._write_config()
        text = config.read_text()
        rewritten = text.replace("upstream berth {", STRICT_ACCEPT, 1).replace(
            'proxy_set_header Connection "";',
            'proxy_set_header Connection "";\n            proxy_set_header Accept $strict_accept;', 1)
        assert rewritten.count("$strict_accept") == 2, "tests/front.py's nginx config changed"
        config.write_text(rewritten)
        return config


@pytest.fixture(scope="module")
def rendering_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(azurite, tmp_path_factory.mktemp("rendering"), BERTH_DOCKER_RENDITIONS="*")
    yield instance
    stop_server(instance)


@pytest.fixture(scope="module")
def strict(rendering_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """The strict consumer in front of Berth with renditions on."""
    nginx = require_tool("nginx", package="nginx-light")
    with StrictFront(nginx, [rendering_server.host], tmp_path_factory.mktemp("strict-on")) as front:
        yield front


@pytest.fixture(scope="module")
def strict_off(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """The strict consumer in front of Berth as configured by default (renditions off)."""
    nginx = require_tool("nginx", package="nginx-light")
    with StrictFront(nginx, [server.host], tmp_path_factory.mktemp("strict-off")) as front:
        yield front


@pytest.fixture(scope="module")
def skopeo() -> str:
    return require_tool("skopeo")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def inspect_raw(skopeo: str, reference: str) -> bytes:
    return run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{reference}").stdout.encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(skopeo: str, layout: Path, target: str, *flags: str) -> None:
    run(skopeo, "copy", "--dest-tls-verify=false", "--preserve-digests", *flags, f"oci:{layout}:v1",
        f"docker://{target}")


def test_skopeo_pulls_an_oci_image_as_docker(skopeo: str, rendering_server: Server, strict: Front, repo: str,
                                             tmp_path: Path) -> None:
    source = tmp_path / "src"
    pushed = image_layout(source, "v1")
    push(skopeo, source, f"{rendering_server.host}/{repo}:v1")
    raw = inspect_raw(skopeo, f"{strict.host}/{repo}:v1")
    manifest, original = json.loads(raw), json.loads(read_blob(source, pushed))
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["digest"] == original["config"]["digest"]
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in original["layers"]]
    # The whole image comes through, layers and all, under the rendition's digest.
    pulled = tmp_path / "pulled"
    run(skopeo, "copy", "--src-tls-verify=false", f"docker://{strict.host}/{repo}:v1", f"dir:{pulled}")
    assert (pulled / "manifest.json").read_bytes() == raw
    for layer in original["layers"]:
        assert (pulled / layer["digest"].split(":", 1)[1]).read_bytes() == read_blob(source, layer["digest"])
    assert inspect_raw(skopeo, f"{strict.host}/{repo}@{sha256(raw)}") == raw
    # Without the strict consumer, the OCI image as pushed.
    assert sha256(inspect_raw(skopeo, f"{rendering_server.host}/{repo}:v1")) == pushed


def test_skopeo_pulls_an_oci_index_as_a_docker_list(skopeo: str, rendering_server: Server, strict: Front,
                                                    repo: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    multiarch_layout(source, "v1")
    push(skopeo, source, f"{rendering_server.host}/{repo}:v1", "--all")
    raw = inspect_raw(skopeo, f"{strict.host}/{repo}:v1")
    manifest_list = json.loads(raw)
    assert manifest_list["mediaType"] == DOCKER_LIST
    assert [entry["platform"]["architecture"] for entry in manifest_list["manifests"]] == ["amd64", "arm64"]
    pulled = tmp_path / "pulled"
    run(skopeo, "copy", "--all", "--src-tls-verify=false", f"docker://{strict.host}/{repo}:v1", f"dir:{pulled}")
    assert (pulled / "manifest.json").read_bytes() == raw
    for entry in manifest_list["manifests"]:
        child = inspect_raw(skopeo, f"{strict.host}/{repo}@{entry['digest']}")
        assert json.loads(child)["mediaType"] == DOCKER_MANIFEST and sha256(child) == entry["digest"]


def test_pull_fails_through_a_strict_consumer_without_renditions(skopeo: str, server: Server, strict_off: Front,
                                                                  repo: str, tmp_path: Path) -> None:
    image_layout(tmp_path / "src", "v1")
    push(skopeo, tmp_path / "src", f"{server.host}/{repo}:v1")
    result = run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{strict_off.host}/{repo}:v1",
                 check=False)
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr.lower(), result.stderr
    pulled = run(skopeo, "copy", "--src-tls-verify=false", f"docker://{strict_off.host}/{repo}:v1",
                 f"dir:{tmp_path / 'out'}", check=False)
    assert pulled.returncode != 0


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    binary = require_tool("podman")
    runroot = tempfile.mkdtemp(prefix="berth-run-", dir="/tmp")  # podman wants it under 50 characters
    yield [binary, "--storage-driver", "vfs", "--root", str(tmp_path / "storage"), "--runroot", runroot]
    shutil.rmtree(runroot, ignore_errors=True)


def test_podman_pulls_an_oci_image_as_docker(skopeo: str, podman: list[str], rendering_server: Server,
                                             strict: Front, repo: str, tmp_path: Path) -> None:
    image_layout(tmp_path / "src", "v1")
    push(skopeo, tmp_path / "src", f"{rendering_server.host}/{repo}:v1")
    rendition = sha256(inspect_raw(skopeo, f"{strict.host}/{repo}:v1"))
    reference = f"{strict.host}/{repo}:v1"
    run(*podman, "pull", "--tls-verify=false", reference)
    inspected = json.loads(run(*podman, "image", "inspect", reference).stdout)[0]
    assert inspected["ManifestType"] == DOCKER_MANIFEST
    assert inspected["Digest"] == rendition


def test_ctr_pulls_an_oci_index_as_a_docker_list(skopeo: str, containerd: list[str], rendering_server: Server,
                                                 strict: Front, repo: str, tmp_path: Path) -> None:
    multiarch_layout(tmp_path / "src", "v1")
    push(skopeo, tmp_path / "src", f"{rendering_server.host}/{repo}:v1", "--all")
    rendition = sha256(inspect_raw(skopeo, f"{strict.host}/{repo}:v1"))
    reference = f"{strict.host}/{repo}:v1"
    run(*containerd, "images", "pull", "--plain-http", "--all-platforms", reference)
    listed = [line.split() for line in run(*containerd, "images", "ls").stdout.splitlines()]
    assert [reference, DOCKER_LIST, rendition] in [line[:3] for line in listed], listed
