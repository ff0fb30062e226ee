"""skopeo (containers/image, as podman and buildah use it) against Berth."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.clients.layouts import image_layout, manifest_digest, multiarch_layout, read_blob
from tests.conftest import Server, require_tool
from tests.front import Front


@pytest.fixture(scope="module")
def skopeo() -> str:
    return require_tool("skopeo")


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def copy(skopeo: str, source: str, destination: str, *flags: str) -> None:
    run(skopeo, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", *flags, source, destination)


def test_oci_image_round_trip_keeps_digests(skopeo: str, server: Server, repo: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    pushed = image_layout(source, "v1", [3_000_000, 10_000])
    copy(skopeo, f"oci:{source}:v1", f"docker://{server.host}/{repo}:v1", "--preserve-digests")
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{server.host}/{repo}:v1")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed
    assert raw.encode() == read_blob(source, pushed)
    pulled = tmp_path / "pulled"
    copy(skopeo, f"docker://{server.host}/{repo}:v1", f"oci:{pulled}:v1", "--preserve-digests")
    assert manifest_digest(pulled, "v1") == pushed
    manifest = json.loads(read_blob(pulled, pushed))
    for layer in manifest["layers"]:
        assert read_blob(pulled, layer["digest"]) == read_blob(source, layer["digest"])


def test_docker_v2s2_image(skopeo: str, server: Server, repo: str, tmp_path: Path) -> None:
    image_layout(tmp_path / "src", "v1")
    copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:v2s2", "--format", "v2s2")
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{server.host}/{repo}:v2s2")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    # Registry to registry (through a cross-repository mount) without changing a byte.
    copy(skopeo, f"docker://{server.host}/{repo}:v2s2", f"docker://{server.host}/{repo}/copy:v2s2",
         "--preserve-digests")
    again = run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{server.host}/{repo}/copy:v2s2")
    assert "sha256:" + hashlib.sha256(again.encode()).hexdigest() == digest
    pulled = tmp_path / "dir"
    copy(skopeo, f"docker://{server.host}/{repo}:v2s2", f"dir:{pulled}")
    assert (pulled / "manifest.json").read_text() == raw


def test_multi_arch_index_with_all(skopeo: str, server: Server, repo: str, tmp_path: Path) -> None:
    index_digest = multiarch_layout(tmp_path / "src", "multi")
    copy(skopeo, f"oci:{tmp_path / 'src'}:multi", f"docker://{server.host}/{repo}:multi", "--all",
         "--preserve-digests")
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{server.host}/{repo}:multi")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == index_digest
    pulled = tmp_path / "pulled"
    copy(skopeo, f"docker://{server.host}/{repo}:multi", f"oci:{pulled}:multi", "--all", "--preserve-digests")
    assert manifest_digest(pulled, "multi") == index_digest
    for child in json.loads(raw)["manifests"]:
        assert read_blob(pulled, child["digest"]) == read_blob(tmp_path / "src", child["digest"])


def test_list_tags_and_delete(skopeo: str, server: Server, repo: str, tmp_path: Path) -> None:
    image_layout(tmp_path / "src", "v1")
    for tag in ("1.0", "1.1", "latest"):
        copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:{tag}")
    listed = json.loads(run(skopeo, "list-tags", "--tls-verify=false", f"docker://{server.host}/{repo}"))
    assert listed["Tags"] == ["1.0", "1.1", "latest"]
    # skopeo deletes the manifest by digest, which takes every tag on it away; the repository,
    # left without manifests, is gone (as in ACR).
    run(skopeo, "delete", "--tls-verify=false", f"docker://{server.host}/{repo}:1.0")
    response = httpx.get(f"{server.url}/v2/{repo}/tags/list")
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_pull_through_proxy_delivery(skopeo: str, server: Server, proxy_server: Server, repo: str,
                                     tmp_path: Path) -> None:
    pushed = image_layout(tmp_path / "src", "v1", [1_500_000])
    copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:v1")
    copy(skopeo, f"docker://{proxy_server.host}/{repo}:v1", f"oci:{tmp_path / 'out'}:v1", "--preserve-digests")
    assert manifest_digest(tmp_path / "out", "v1") == pushed


def test_push_through_front_spreads_over_instances(skopeo: str, front: Front, repo: str, tmp_path: Path) -> None:
    pushed = image_layout(tmp_path / "src", "v1", [400_000, 200_000])
    mark = front.mark()
    copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{front.host}/{repo}:v1", "--preserve-digests")
    # Requests nginx answered itself (upstream "") include skopeo's TLS probe of the http port.
    served = [request for request in front.served_since(mark) if request.upstream]
    assert {request.upstream for request in served} == set(front.backends), served
    # Each upload session's PATCH and PUT name it in the URI; at least one session crossed instances.
    sessions: dict[str, set[str]] = {}
    for request in served:
        if "/blobs/uploads/" in request.uri and request.method in ("PATCH", "PUT"):
            session = request.uri.split("/blobs/uploads/", 1)[1].split("?", 1)[0]
            sessions.setdefault(session, set()).add(request.upstream)
    assert sessions and any(len(upstreams) > 1 for upstreams in sessions.values()), served
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{front.host}/{repo}:v1")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed


def test_locked_images(skopeo: str, server: Server, repo: str, tmp_path: Path) -> None:
    """A write-disabled tag refuses skopeo's push over it; a read-disabled image is not found."""
    image_layout(tmp_path / "src", "v1")
    image_layout(tmp_path / "other", "v1", [20_000])
    copy(skopeo, f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/{repo}:prod")
    patch = httpx.patch(f"{server.url}/acr/v1/{repo}/_tags/prod", json={"writeEnabled": False})
    assert patch.status_code == 200
    overwrite = subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'other'}:v1",
                                f"docker://{server.host}/{repo}:prod"], capture_output=True, text=True, timeout=300)
    assert overwrite.returncode != 0 and "disallowed" in overwrite.stderr, overwrite.stderr
    assert httpx.patch(f"{server.url}/acr/v1/{repo}/_tags/prod", json={"readEnabled": False}).status_code == 200
    pull = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{server.host}/{repo}:prod"],
                          capture_output=True, text=True, timeout=300)
    assert pull.returncode != 0 and "manifest unknown" in pull.stderr, pull.stderr


def test_readmes_worked_example_image(skopeo: str, server: Server, repo: str, tmp_path: Path) -> None:
    """README's worked example makes its own image (scripts/example-image.py) and pushes it."""
    made = subprocess.run(["python3", str(Path(__file__).parents[2] / "scripts" / "example-image.py"),
                           str(tmp_path / "layout")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    copy(skopeo, f"oci:{tmp_path / 'layout'}:1.0", f"docker://{server.host}/{repo}:1.0")
    inspected = json.loads(run(skopeo, "inspect", "--tls-verify=false", f"docker://{server.host}/{repo}:1.0"))
    assert inspected["Digest"] == made.stdout.strip()
    assert inspected["Labels"] == {"org.opencontainers.image.title": "berth-example"}
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")
