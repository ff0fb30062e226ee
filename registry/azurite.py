"""Local processes: Azurite (the project's own npm install) for `serve`, the tests and the
benchmark, and the small helpers they share to start and stop servers on loopback."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
# Azurite's fixed, publicly documented development key; it protects nothing real.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def die_with_parent() -> None:
    """In the child before exec: on Linux, ask for SIGTERM when the parent dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _listens(pid: int, port: int) -> bool:
    """Whether the process (or a descendant) holds the socket listening on loopback `port`: a
    port picked as free may be taken by another program before ours binds it, and then it is
    that program that answers. True where /proc cannot tell."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            return True
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for fd in os.listdir(f"/proc/{current}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{current}/fd/{fd}") in inodes:
                        return True
            pending += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return False


def wait_until_serving(url: str, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Block until `url` answers 200 or 401 (a registry with auth on), from `process`; fail if
    the process exits."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    port = urlsplit(url).port or 80
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200 and _listens(process.pid, port):
                    return
        except urllib.error.HTTPError as error:
            if error.code == 401 and _listens(process.pid, port):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


class DataFolderBusy(RuntimeError):
    """Another process runs an Azurite on this data folder; `holder` says which (pid, what)."""

    def __init__(self, location: Path, holder: str):
        super().__init__(f"{location} is in use by {holder or 'another process'}")
        self.location = location
        self.holder = holder


class DataFolderLock:
    """An exclusive lock on a data folder (flock: the kernel drops it when the holder dies,
    however it dies). Two Azurites on one folder overwrite each other's files and lose data."""

    def __init__(self, location: Path, holder: str):
        self.path = location / ".berth-lock"
        self._holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DataFolderBusy(self.path.parent, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {self._holder}\n".encode(), 0)
        self._fd = fd

    @property
    def fd(self) -> int | None:
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock (once no child holds it)
            self._fd = None

    @staticmethod
    def holder(location: Path) -> str | None:
        """Who holds the folder's lock now (what it wrote), or None when nobody does."""
        path = location / ".berth-lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)  # a shared lock we took is dropped with it
        return None


class Azurite:
    """One Azurite process on 127.0.0.1, on ports it picks itself. With a data folder, it holds
    that folder's lock while it runs (DataFolderBusy if another process does)."""

    def __init__(self, location: Path | None = None, host: str = "127.0.0.1", holder: str = ""):
        self.location = location  # None keeps everything in memory
        self.host = host
        self.blob_port = self.queue_port = self.table_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = None if location is None else DataFolderLock(location, holder or "an Azurite")

    @property
    def connection_string(self) -> str:
        base = f"http://{self.host}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT};"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}; run `npm ci` in {PROJECT_ROOT}")
        if self._lock is not None:
            self._lock.acquire()
        try:
            for _ in range(3):  # a port picked as free can be taken before Azurite binds it
                if self._try_start(timeout):
                    return self
            raise RuntimeError("Azurite did not start; see its output above")
        except BaseException:  # Ctrl-C while waiting too: no orphan Azurite, no lock left held
            self.stop()
            raise

    def _try_start(self, timeout: float) -> bool:
        self.blob_port, self.queue_port, self.table_port = free_port(), free_port(), free_port()
        args = [
            str(AZURITE_BIN), "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
            "--blobHost", self.host, "--blobPort", str(self.blob_port),
            "--queueHost", self.host, "--queuePort", str(self.queue_port),
            "--tableHost", self.host, "--tablePort", str(self.table_port),
        ]
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        # Azurite holds the folder's lock too: it stays taken until both are gone, even if we are
        # killed and Azurite takes a moment to follow.
        held = (self._lock.fd,) if self._lock is not None and self._lock.fd is not None else ()
        self.process = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, preexec_fn=die_with_parent, pass_fds=held)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if all(_answers(port, self.host) for port in (self.blob_port, self.queue_port, self.table_port)):
                return True
            time.sleep(0.1)
        self._stop_process()
        return False

    def stop(self) -> None:
        try:
            self._stop_process()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _stop_process(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
