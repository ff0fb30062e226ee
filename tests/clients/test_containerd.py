"""containerd's ctr against Berth, with a private containerd daemon started for the test."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.layouts import multiarch_layout
from tests.conftest import Server, require_tool


@pytest.fixture(scope="module")
def containerd() -> Iterator[list[str]]:
    """A containerd of our own (no CRI), its state and socket in a fresh temp folder."""
    daemon = require_tool("containerd")
    ctr = require_tool("ctr")
    base = Path(tempfile.mkdtemp(prefix="berth-ctr-", dir="/tmp"))  # socket paths must stay short
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{base}/c.sock"\n[ttrpc]\n  address = "{base}/t.sock"\n'
    )
    log = (base / "containerd.log").open("wb")
    process = subprocess.Popen([daemon, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    command = [ctr, "-a", str(base / "c.sock"), "-n", "berth-test"]
    deadline = time.monotonic() + 30
    while subprocess.run([*command, "version"], capture_output=True).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"containerd did not start: {(base / 'containerd.log').read_text()}")
        time.sleep(0.2)
    yield command
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
    shutil.rmtree(base, ignore_errors=True)


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
