"""nginx as the round-robin front end Berth has on Azure: every request, not every connection,
may land on another instance. The access log says which instance served which request."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from registry.azurite import die_with_parent, free_port, stop_process, wait_until_serving

SYNC_PATH = "/_front/sync"  # answered by nginx itself; see Front.served_since

# One JSON object per request; $upstream_addr names the instance (host:port) that served it.
LOG_FORMAT = (
    '{"method":"$request_method","uri":"$request_uri","status":$status,"upstream":"$upstream_addr",'
    '"upstream_status":"$upstream_status","connection":$connection,"request_time":$request_time}'
)

CONFIG = """\
{user}
# One worker: one round-robin sequence over the backends, and log lines in request order.
worker_processes 1;
pid {prefix}/nginx.pid;
lock_file {prefix}/nginx.lock;
error_log {prefix}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    log_format berth escape=json '{log_format}';
    access_log {prefix}/access.log berth;
    {temp_paths}
    upstream berth {{
        {servers}
        keepalive 32;
        # Shorter than Berth's own keep-alive (30 s): nginx must never reuse a connection the
        # backend is closing, because a failed request is not retried elsewhere.
        keepalive_timeout 10s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        client_body_timeout 600s;
        send_timeout 600s;
        large_client_header_buffers 8 64k;  # bearer tokens can be long
        merge_slashes off;
        location = {sync_path} {{ return 200; }}
        location / {{
            proxy_pass http://berth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";  # keep upstream connections alive
            # Berth builds token realms and links from Host: the client's host:port, unchanged.
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_max_temp_file_size 0;
            proxy_buffer_size 64k;  # response headers: long Location (SAS) URLs
            proxy_buffers 8 64k;
            proxy_redirect off;
            # Never replay a request on another instance: a retried PATCH would append twice.
            proxy_next_upstream off;
            proxy_connect_timeout 10s;
            proxy_send_timeout 600s;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """nginx from PATH, else Debian's /usr/sbin (not on a non-root user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


@dataclass(frozen=True)
class Served:
    """One line of the access log: a request and the instance that answered it."""

    method: str
    uri: str
    status: int
    upstream: str  # "host:port" of the instance, "" when nginx answered itself
    connection: int  # the client connection's serial number at nginx


class Front:
    """nginx on a free loopback port, balancing each request round-robin over `backends`."""

    def __init__(self, nginx: str, backends: list[str], directory: Path):
        self.nginx = nginx
        self.backends = list(backends)  # "127.0.0.1:port" each
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def start(self) -> Front:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a port picked as free can be taken before nginx binds it
            self.port = free_port()
            config = self._write_config()
            self.process = subprocess.Popen(
                [self.nginx, "-e", str(self.error_log), "-p", str(self.directory), "-c", str(config),
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
            try:
                wait_until_serving(f"{self.url}{SYNC_PATH}", self.process, "nginx", timeout=15)
                return self
            except RuntimeError:
                stop_process(self.process)
        raise RuntimeError(f"nginx did not start:\n{self.error_log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)  # SIGTERM: nginx's fast shutdown, workers included
            self.process = None

    def __enter__(self) -> Front:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark(self) -> int:
        """A position in the access log; served_since(mark) returns what came after it."""
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def served_since(self, mark: int, timeout: float = 10) -> list[Served]:
        """Requests logged after `mark`, up to now.

        nginx logs a request just after its last byte is sent, so a client may see a response a
        moment before its line exists. One worker handles requests in turn: once a sync request
        sent now is logged, every earlier request is too.
        """
        token = uuid.uuid4().hex
        with urllib.request.urlopen(f"{self.url}{SYNC_PATH}?{token}", timeout=timeout):
            pass
        deadline = time.monotonic() + timeout
        while True:
            with self.access_log.open("rb") as log:
                log.seek(mark)
                lines = log.read().decode().splitlines()
            if any(token in line for line in lines):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not log {SYNC_PATH}?{token} within {timeout} s")
            time.sleep(0.02)
        records = [json.loads(line) for line in lines]
        return [
            Served(r["method"], r["uri"], r["status"], r["upstream"], r["connection"])
            for r in records if not r["uri"].startswith(SYNC_PATH)
        ]

    def _write_config(self) -> Path:
        # nginx creates its temp folders at start-up, by default under /var/lib (root only).
        temps = self.directory / "temp"
        temps.mkdir(exist_ok=True)
        # A temp path for a module this build lacks is an error: ask the build which it has.
        built = subprocess.run([self.nginx, "-V"], capture_output=True, text=True).stderr
        temp_paths = "\n    ".join(
            f"{module}_temp_path {temps / module};"
            for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if f"--without-http_{module}_module" not in built
        )
        config = self.directory / "nginx.conf"
        config.write_text(CONFIG.format(
            user=self._user_directive(),
            prefix=self.directory,
            log_format=LOG_FORMAT,
            temp_paths=temp_paths,
            servers="\n        ".join(f"server {backend};" for backend in self.backends),
            port=self.port,
            sync_path=SYNC_PATH,
        ))
        return config

    @staticmethod
    def _user_directive() -> str:
        """As root, nginx's workers would drop to `nobody`, who cannot enter pytest's private
        temp folders; keep them as the user running the tests. Others need (and get) none."""
        if os.geteuid() != 0:
            return ""
        return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
