"""containerd's ctr against Berth, with a private containerd daemon started for the test."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import httpx

from registry.azurite import Azurite
from tests.clients.layouts import multiarch_layout
from tests.conftest import Server, require_tool


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ctr_pulls_all_platforms_and_pushes_them_back(containerd: list[str], server: Server, repo: str,
                                                      tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    index_digest = multiarch_layout(tmp_path / "src", "multi")
    run(skopeo, "copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:multi",
        f"docker://{server.host}/{repo}:multi")
    source = f"{server.host}/{repo}:multi"
    run(*containerd, "images", "pull", "--plain-http", "--all-platforms", source)
    listed = run(*containerd, "images", "ls")
    assert source in listed and index_digest in listed
    # Push to a new repository: ctr tries a mount for every blob, then uploads on 202.
    target = f"{server.host}/{repo}/pushed:multi"
    run(*containerd, "images", "push", "--plain-http", target, source)
    pushed = httpx.get(f"{server.url}/v2/{repo}/pushed/manifests/multi")
    assert pushed.status_code == 200
    assert "sha256:" + hashlib.sha256(pushed.content).hexdigest() == index_digest



def test_ctr_pulls_through_the_cache_by_tag_and_by_digest(containerd: list[str], server: Server, azurite: Azurite,
                                                           tmp_path: Path) -> None:
    """Every platform of an upstream image, pulled cold through two cache rules: by tag, and by digest."""
    from tests.api.test_pullthrough import cli, cncf_registry

    skopeo = require_tool("skopeo")
    index_digest = multiarch_layout(tmp_path / "src", "multi")
    with cncf_registry() as (upstream, _):
        run(skopeo, "copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:multi",
            f"docker://{upstream.host}/team/ctr:multi")
        prefixes = [f"ctr{os.urandom(4).hex()}" for _ in range(2)]
        for prefix in prefixes:
            made = cli(azurite, "create", f"rule-{prefix}", "-s", f"http://{upstream.host}/team/*", "-t", f"{prefix}/*")
            assert made.returncode == 0, made.stderr
        try:
            by_tag = f"{server.host}/{prefixes[0]}/ctr:multi"
            run(*containerd, "images", "pull", "--plain-http", "--all-platforms", by_tag)
            by_digest = f"{server.host}/{prefixes[1]}/ctr@{index_digest}"
            run(*containerd, "images", "pull", "--plain-http", "--all-platforms", by_digest)
            listed = run(*containerd, "images", "ls")
            assert by_tag in listed and by_digest in listed and index_digest in listed
        finally:
            for prefix in prefixes:
                assert cli(azurite, "delete", f"rule-{prefix}").returncode == 0
