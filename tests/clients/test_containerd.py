"""containerd's ctr against Berth, with a private containerd daemon started for the test."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import httpx

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

