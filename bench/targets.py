"""The servers a benchmark repetition runs against, each started fresh on loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving


@dataclass
class Target:
    name: str
    host: str
    process: subprocess.Popen[bytes]
    workdir: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_berth(azurite: Azurite, delivery: str, log: Path, root: Path = PROJECT_ROOT,
                log_level: str = "warning", access_log: bool = False, **settings: str) -> Target:
    """Berth serving from the checkout at `root` (this one by default) on a free loopback port."""
    port = free_port()
    env = {
        **os.environ,
        "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "BERTH_BLOB_DELIVERY": delivery,
        "BERTH_AUTH": "none",
        **settings,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "registry", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", log_level] + (["--access-log"] if access_log else []),
        cwd=root, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    target = Target(f"berth-{delivery}", f"127.0.0.1:{port}", process)
    wait_until_serving(f"{target.url}/v2/", process, target.name)
    return target


CNCF_CONFIG = """version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""


def start_cncf(log: Path) -> Target:
    """The CNCF reference registry (distribution 2.8) with filesystem storage in a temp dir."""
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-cncf-"))
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(CNCF_CONFIG.format(root=workdir / "data", port=port))
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    target = Target("cncf", f"127.0.0.1:{port}", process, workdir)
    wait_until_serving(f"{target.url}/v2/", process, "docker-registry")
    return target
