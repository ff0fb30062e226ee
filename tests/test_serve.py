"""`python -m registry serve` with no storage configured: it brings its own Azurite and takes it down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from registry.azurite import PROJECT_ROOT, free_port, stop_process, wait_until_serving


def azurite_pids(data_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "azurite" in command and str(data_dir) in command:
                pids.append(int(entry.name))
    return pids


def test_serve_starts_and_stops_its_own_azurite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_LOCAL_DATA_DIR"] = str(tmp_path / "data")  # absolute: overrides the project folder
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "registry", "serve", "--port", str(port)], cwd=PROJECT_ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/v2/", process, "berth serve", timeout=60)
        data = tmp_path / "data"
        assert azurite_pids(data), "no Azurite running on the local data folder"
        assert (data / "storage-connection").exists()
        assert httpx.post(f"http://127.0.0.1:{port}/v2/local/app/blobs/uploads/").status_code == 202
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read().decode()
        assert "started Azurite" in output and "anyone who reaches this address" in output
        assert azurite_pids(data) == []
        assert not (data / "storage-connection").exists()
        assert (data / "azurite").is_dir()  # the registry's data stays for the next run
    finally:
        if process.poll() is None:
            stop_process(process)
