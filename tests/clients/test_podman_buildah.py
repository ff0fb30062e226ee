"""buildah builds and pushes, podman pulls and pushes: the tools people build images with."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, require_tool


def storage_flags(root: Path) -> list[str]:
    # podman refuses a runroot path longer than 50 characters; pytest's tmp paths are longer.
    runroot = tempfile.mkdtemp(prefix="berth-run-", dir="/tmp")
    _runroots.append(runroot)
    return ["--storage-driver", "vfs", "--root", str(root / "storage"), "--runroot", runroot]


_runroots: list[str] = []


@pytest.fixture(autouse=True)
def _remove_runroots() -> Iterator[None]:
    yield
    while _runroots:
        shutil.rmtree(_runroots.pop(), ignore_errors=True)


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture
def buildah_image(tmp_path: Path) -> tuple[str, list[str]]:
    buildah = require_tool("buildah")
    flags = storage_flags(tmp_path)
    container = run(buildah, *flags, "from", "scratch")
    payload = tmp_path / "hello.txt"
    payload.write_text("built by buildah\n")
    run(buildah, *flags, "copy", container, str(payload), "/hello.txt")
    run(buildah, *flags, "config", "--cmd", "/hello.txt", container)
    run(buildah, *flags, "commit", container, "localhost/berth-test:latest")
    return buildah, flags


@pytest.mark.parametrize("image_format", ["oci", "v2s2"])
def test_buildah_push_then_podman_pull(buildah_image: tuple[str, list[str]], server: Server, repo: str,
                                       tmp_path: Path, image_format: str) -> None:
    buildah, flags = buildah_image
    target = f"{server.host}/{repo}:{image_format}"
    run(buildah, *flags, "push", "--tls-verify=false", "--format", image_format,
        "localhost/berth-test:latest", f"docker://{target}")
    manifest = httpx.get(f"{server.url}/v2/{repo}/manifests/{image_format}").json()
    expected = {"oci": "application/vnd.oci.image.manifest.v1+json",
                "v2s2": "application/vnd.docker.distribution.manifest.v2+json"}[image_format]
    assert manifest["mediaType"] == expected

    podman = require_tool("podman")
    podman_flags = storage_flags(tmp_path / "podman")
    run(podman, *podman_flags, "pull", "--tls-verify=false", target)
    inspected = json.loads(run(podman, *podman_flags, "image", "inspect", target))
    assert inspected[0]["Config"]["Cmd"] == ["/hello.txt"]
    # podman pushes what it pulled to another repository (blobs mount across repositories).
    run(podman, *podman_flags, "push", "--tls-verify=false", target, f"docker://{server.host}/{repo}/again:x")
    again = httpx.get(f"{server.url}/v2/{repo}/again/manifests/x")
    assert again.status_code == 200
