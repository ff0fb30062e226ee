"""A private containerd daemon for ctr tests (no CRI; state and socket in a temp folder)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool


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
