"""`python -m registry serve` with no storage configured: it brings its own Azurite and takes it down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def test_one_server_per_data_folder_and_the_cli_uses_the_running_ones_storage(tmp_path: Path) -> None:
    """README's worked example once started a second `serve` on the data of the first: a second
    Azurite on the same files, and on its exit the first lost its storage-connection, so the CLI
    then wrote to a third Azurite. Now the second refuses, naming the first, and loses nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_LOCAL_DATA_DIR"] = str(tmp_path / "data")
    data = tmp_path / "data"
    first_port, second_port = free_port(), free_port()
    first = subprocess.Popen([sys.executable, "-m", "registry", "serve", "--port", str(first_port)],
                             cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
    try:
        wait_until_serving(f"http://127.0.0.1:{first_port}/v2/", first, "berth serve", timeout=60)
        second = subprocess.run([sys.executable, "-m", "registry", "serve", "--port", str(second_port)],
                                cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr and f"127.0.0.1:{first_port}" in second.stderr
        assert len(azurite_pids(data)) == 1 and (data / "storage-connection").exists()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "registry", *args], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)

        created = cli("tokens", "create", "ci", "--scope", "team/app=content/read")
        assert created.returncode == 0 and "created" in created.stdout
        assert "BERTH_AUTH=none" in created.stderr  # it would have no effect on this registry
        assert len(azurite_pids(data)) == 1  # the CLI used the running server's Azurite
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        # After a restart the token is still there: it went to the data the server keeps.
        listed = cli("tokens", "list")
        assert listed.returncode == 0 and listed.stdout.startswith("ci\t")
        assert azurite_pids(data) == []  # the CLI's own Azurite stopped with it, and gave the lock back
    finally:
        if first.poll() is None:
            stop_process(first)


def test_serve_and_roles_refuse_malformed_arguments(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "registry", *args], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "BERTH_LOCAL_DATA_DIR": str(tmp_path)})

    port = cli("serve", "--port", "70661")
    assert port.returncode == 2 and "1 to 65535" in port.stderr
    guid = cli("roles", "assign", "alice", "--role", "AcrPull", "--repository", "team/*")
    assert guid.returncode == 2 and "GUID" in guid.stderr
    assert not (tmp_path / "azurite").exists()  # refused before any storage was touched


def test_a_killed_serve_leaves_no_lock_and_its_stale_connection_file_is_not_used(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_LOCAL_DATA_DIR"] = str(tmp_path / "data")
    data = tmp_path / "data"
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "registry", "serve", "--port", str(port)], cwd=PROJECT_ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/v2/", serve, "berth serve", timeout=60)
        serve.kill()  # -9: no cleanup, the connection file stays behind
        serve.wait(timeout=10)
        assert (data / "storage-connection").exists()
        deadline = time.monotonic() + 20
        while azurite_pids(data) and time.monotonic() < deadline:  # Azurite follows its parent
            time.sleep(0.2)
        assert azurite_pids(data) == []
        listed = subprocess.run([sys.executable, "-m", "registry", "tokens", "list"], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert not (data / "storage-connection").exists()  # recognised as stale: nobody held the lock
    finally:
        if serve.poll() is None:
            stop_process(serve)
