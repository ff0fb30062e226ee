"""A large layer pushed docker-style with its POST, PATCH and PUT on different Berth instances.

docker and containerd push a layer as POST, one PATCH carrying the whole body (chunked
transfer encoding), then an empty PUT ?digest=. Behind a load balancer those three requests
reach different instances; the PUT must then finish from what storage says, not re-read the
blob. This starts one Azurite and three Berth instances (A, B, C; redirect mode) on it and
times each step separately for three variants:

- cross:        POST on A, PATCH on B, PUT on C (sha256);
- same:         POST on A, PATCH on B, PUT on B (the instance that hashed the bytes);
- sha512-cross: as cross, with POST ?digest-algorithm=sha512 and PUT ?digest=sha512:...

Each push sends a fresh random layer, generated and hashed on the fly in 1 MiB chunks (never
held in memory); it is then checked with a HEAD (Content-Length) and, once per variant, a
GET with curl following the redirect (digest of the stream). Peak RSS of each instance's
process tree is sampled during every push. `--before REF` runs the same against an older
commit (a temporary git worktree) for a before/after line.

Run from the repository root:
    .venv/bin/python -m bench.cross_instance [--size-mib 1024] [--repetitions 3] [--before REF]
It writes bench/results/<UTC date-time>-cross-instance.md and .json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench.run import tree_rss
from bench.targets import Target, start_berth
from registry.azurite import PROJECT_ROOT, Azurite

MiB = 1024 * 1024
CHUNK = MiB
WORK = PROJECT_ROOT / "bench" / "work"
RESULTS = PROJECT_ROOT / "bench" / "results"
REPOSITORY = "bench/x"
INSTANCES = ("A", "B", "C")
# variant -> (digest algorithm, instance of the POST, of the PATCH, of the PUT)
VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "cross": ("sha256", "A", "B", "C"),
    "same": ("sha256", "A", "B", "B"),
    "sha512-cross": ("sha512", "A", "B", "C"),
}
STEPS = ("post_s", "patch_s", "put_s", "patch_mib_s")
PUT_GOAL_S = 1.0
SERVED = ("registry", "function_app.py", "requirements.txt")  # the code a Berth instance runs


class RandomLayer:
    """`size` random bytes (an AES-CTR keystream under a fresh key: fast, incompressible),
    produced in 1 MiB chunks and hashed as they are handed out."""

    def __init__(self, size: int, algorithm: str):
        self.size = size
        self.algorithm = algorithm
        self.sent = 0
        self._hash = hashlib.new(algorithm)
        self._cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
        self._zeros = bytes(CHUNK)

    def chunks(self) -> Iterator[bytes]:
        while self.sent < self.size:
            n = min(CHUNK, self.size - self.sent)
            chunk = self._cipher.update(self._zeros[:n])
            self._hash.update(chunk)
            self.sent += n
            yield chunk

    @property
    def digest(self) -> str:
        if self.sent != self.size:
            raise RuntimeError(f"only {self.sent} of {self.size} bytes were sent")
        return f"{self.algorithm}:{self._hash.hexdigest()}"


class StepFailed(Exception):
    def __init__(self, step: str, request: str, status: int | None, body: str, headers: dict[str, str]):
        super().__init__(f"{step}: {request} -> {status if status is not None else 'no response'}")
        self.detail = {"step": step, "request": request, "status": status, "body": body[:4000],
                       "headers": headers}


def _expect(step: str, response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        request = response.request
        shown = {k: v for k, v in request.headers.items() if k.lower() in
                 ("content-length", "transfer-encoding", "content-range", "content-type")}
        raise StepFailed(step, f"{request.method} {request.url} {shown}", response.status_code,
                         response.text, dict(response.headers))


@dataclass
class Cluster:
    """One Azurite and three Berth instances on it, all serving code from `root`."""

    root: Path
    logs: Path
    azurite: Azurite = field(default_factory=Azurite)
    instances: dict[str, Target] = field(default_factory=dict)

    def start(self) -> Cluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.azurite.start()
        for name in INSTANCES:
            self.instances[name] = start_berth(self.azurite, "redirect", self.logs / f"berth-{name}.log",
                                               root=self.root, log_level="info", access_log=True)
        return self

    def stop(self) -> None:
        for target in self.instances.values():
            target.stop()
        self.azurite.stop()

    def url(self, instance: str, path: str) -> str:
        if path.startswith(("http://", "https://")):
            parsed = httpx.URL(path)
            path = parsed.raw_path.decode()
        return self.instances[instance].url + path

    def rss(self) -> dict[str, int]:
        return {name: tree_rss(target.process.pid) for name, target in self.instances.items()}

    def hwm(self) -> dict[str, int]:
        """VmHWM of each instance's main process (its peak RSS since it started)."""
        peaks = {}
        for name, target in self.instances.items():
            with open(f"/proc/{target.process.pid}/status") as status:
                line = next(line for line in status if line.startswith("VmHWM:"))
            peaks[name] = int(line.split()[1]) * 1024
        return peaks

    def log_tail(self, lines: int = 30) -> dict[str, list[str]]:
        tails = {}
        for name in INSTANCES:
            path = self.logs / f"berth-{name}.log"
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            tails[name] = text[-lines:]
        return tails


class RssSampler:
    """Peak tree RSS of each instance while the `with` block runs (sampled every 20 ms)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.peaks = dict.fromkeys(INSTANCES, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, value in self.cluster.rss().items():
                self.peaks[name] = max(self.peaks[name], value)
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def curl_digest(url: str, algorithm: str) -> tuple[str, float]:
    """GET `url` with curl following redirects; the digest of the body and the wall time."""
    start = time.perf_counter()
    curl = subprocess.Popen(["curl", "-sSfL", url], stdout=subprocess.PIPE)
    summer = subprocess.Popen([f"{algorithm}sum"], stdin=curl.stdout, stdout=subprocess.PIPE, text=True)
    assert curl.stdout is not None
    curl.stdout.close()
    out, _ = summer.communicate()
    if curl.wait() != 0 or summer.returncode != 0:
        raise StepFailed("get", f"curl -L {url}", None, f"curl exited {curl.returncode}", {})
    return f"{algorithm}:{out.split()[0]}", time.perf_counter() - start


def push(client: httpx.Client, cluster: Cluster, variant: str, size: int, verify: bool) -> dict[str, Any]:
    algorithm, post_on, patch_on, put_on = VARIANTS[variant]
    layer = RandomLayer(size, algorithm)
    result: dict[str, Any] = {"variant": variant, "size": size}
    step = "post"
    try:
        with RssSampler(cluster) as sampler:
            params = {"digest-algorithm": algorithm} if algorithm != "sha256" else None
            start = time.perf_counter()
            response = client.post(cluster.url(post_on, f"/v2/{REPOSITORY}/blobs/uploads/"), params=params)
            result["post_s"] = time.perf_counter() - start
            _expect(step, response, 202)
            location = response.headers["Location"]

            step = "patch"  # a generator body: httpx sends it with Transfer-Encoding: chunked
            start = time.perf_counter()
            response = client.patch(cluster.url(patch_on, location), content=layer.chunks(),
                                    headers={"Content-Type": "application/octet-stream"})
            result["patch_s"] = time.perf_counter() - start
            result["patch_mib_s"] = size / MiB / result["patch_s"]
            _expect(step, response, 202)
            result["patch_range"] = response.headers.get("Range")
            if result["patch_range"] != f"0-{size - 1}":
                raise StepFailed(step, f"PATCH {response.request.url}", response.status_code,
                                 f"Range {result['patch_range']!r}, expected 0-{size - 1}", dict(response.headers))
            location = response.headers.get("Location", location)

            step = "put"
            digest = layer.digest
            start = time.perf_counter()
            response = client.put(httpx.URL(cluster.url(put_on, location)).copy_merge_params({"digest": digest}))
            result["put_s"] = time.perf_counter() - start
            _expect(step, response, 201)
            if response.headers.get("Docker-Content-Digest") != digest:
                raise StepFailed(step, f"PUT {response.request.url}", response.status_code,
                                 f"Docker-Content-Digest {response.headers.get('Docker-Content-Digest')!r}",
                                 dict(response.headers))
        result["rss_peak"] = sampler.peaks
        result["digest"] = digest

        step = "head"
        response = client.head(cluster.url(post_on, f"/v2/{REPOSITORY}/blobs/{digest}"))
        _expect(step, response, 200)
        result["head_length_ok"] = response.headers.get("Content-Length") == str(size)
        if not result["head_length_ok"]:
            raise StepFailed(step, f"HEAD {response.request.url}", response.status_code,
                             f"Content-Length {response.headers.get('Content-Length')!r}, expected {size}",
                             dict(response.headers))
        if verify and shutil.which("curl"):
            step = "get"
            got, seconds = curl_digest(cluster.url(put_on, f"/v2/{REPOSITORY}/blobs/{digest}"), algorithm)
            result["get_s"] = seconds
            result["get_digest_ok"] = got == digest
            if got != digest:
                raise StepFailed(step, "GET (curl -L)", 200, f"stream digest {got}, expected {digest}", {})
    except StepFailed as failure:
        result["error"] = failure.detail
    except httpx.HTTPError as error:
        try:
            request = f"{error.request.method} {error.request.url}"
        except RuntimeError:  # an error raised before any request was built has none
            request = "?"
        result["error"] = {"step": step, "request": request, "status": None,
                           "body": f"{type(error).__name__}: {error}", "headers": {}}
    if "error" in result:
        result["log_tail"] = cluster.log_tail()
    return result


def measure(root: Path, logs: Path, size: int, repetitions: int, label: str) -> dict[str, Any]:
    """Every variant `repetitions` times (interleaved) on one cluster serving the code at `root`."""
    cluster = Cluster(root, logs).start()
    pushes: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        idle_before = cluster.rss()
        with httpx.Client(timeout=httpx.Timeout(900.0)) as client:
            for repetition in range(repetitions):
                for variant in VARIANTS:
                    print(f"  {label}: repetition {repetition + 1}/{repetitions}, {variant}, "
                          f"{size // MiB} MiB", flush=True)
                    result = push(client, cluster, variant, size, verify=repetition == 0)
                    result["repetition"] = repetition
                    pushes.append(result)
                    shown = ", ".join(f"{k} {result[k]:.3f}" for k in STEPS if k in result)
                    print(f"    {shown}" + (f"  ERROR {result['error']}" if "error" in result else ""),
                          flush=True)
        idle_after = cluster.rss()
        hwm = cluster.hwm()
    finally:
        cluster.stop()
    return {"root": str(root), "logs": str(logs), "size": size, "repetitions": repetitions,
            "load_average": {"start": load_before, "end": os.getloadavg()}, "pushes": pushes,
            "idle_rss_before": idle_before, "idle_rss_after": idle_after, "vm_hwm": hwm}


def summarize(run: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant in VARIANTS:
        done = [p for p in run["pushes"] if p["variant"] == variant and "error" not in p]
        metrics = {}
        for key in STEPS:
            values = [p[key] for p in done]
            if values:
                metrics[key] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                                "n": len(values)}
        for name in INSTANCES:
            values = [p["rss_peak"][name] / 1e6 for p in done]
            if values:
                metrics[f"rss_{name}_mb"] = {"median": statistics.median(values), "min": min(values),
                                             "max": max(values), "n": len(values)}
        out[variant] = metrics
    return out


def git(*args: str, cwd: Path = PROJECT_ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def check_imports_from(root: Path) -> None:
    """A server started in `root` must import that checkout's `registry`, not another one."""
    found = subprocess.run([sys.executable, "-c", "import registry; print(registry.__file__)"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"python in {root} imports registry from {found}")


def machine() -> dict[str, str]:
    cpu = mem = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    try:
        azurite = json.loads((PROJECT_ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]
    except (OSError, KeyError, ValueError):
        azurite = "?"
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() or "?"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "arch": platform.machine(),
            "python": platform.python_version(), "azurite": azurite, "node": node,
            "kernel": platform.release()}


def client_floor(size: int = 256 * MiB) -> dict[str, float]:
    """How fast this client alone produces and hashes the layer (the PATCH cannot beat it)."""
    out = {}
    for algorithm in ("sha256", "sha512"):
        layer = RandomLayer(size, algorithm)
        start = time.perf_counter()
        for _ in layer.chunks():
            pass
        out[algorithm] = size / MiB / (time.perf_counter() - start)
    return out


def _cell(metrics: dict[str, dict[str, float]], key: str, digits: int = 3) -> str:
    m = metrics.get(key)
    if not m:
        return "–"
    return f"{m['median']:.{digits}f} ({m['min']:.{digits}f}–{m['max']:.{digits}f})"


def _mb(values: dict[str, int]) -> str:
    return " / ".join(f"{values[name] / 1e6:.0f}" for name in INSTANCES)


def _code_line(code: dict[str, Any]) -> str:
    line = f"after = commit {code.get('head', '?')[:7]}"
    if code.get("changed"):
        files = ", ".join(f"`{entry.split(maxsplit=1)[-1]}`" for entry in code["changed"])
        line += (f" plus uncommitted changes to {files} (diff sha256 {code.get('diff_sha256', '?')[:12]}…, "
                 "saved as served.diff beside the logs)")
    if code.get("before"):
        line += f"; before = commit {code['before'][:7]}, in a temporary git worktree"
    return line + "."


def write_report(data: dict[str, Any], started: datetime) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y-%m-%d-%H%M")
    (RESULTS / f"{stamp}-cross-instance.json").write_text(json.dumps(data, indent=1, default=str))
    m = data["machine"]
    runs: dict[str, dict[str, Any]] = data["runs"]
    lines = [
        f"# Cross-instance push, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{data['command']}` (raw numbers: `{stamp}-cross-instance.json`).",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}, {m['arch']}), {m['memory']} RAM, Python {m['python']}, "
        f"Azurite {m['azurite']} in memory on node {m['node']}. One Azurite and three Berth instances "
        f"(A, B, C; redirect mode; uvicorn, one process each) per code version. Every push is a fresh "
        f"random layer; the client produces and hashes it at {data['client_mib_s']['sha256']:.0f} MiB/s "
        f"(sha256) / {data['client_mib_s']['sha512']:.0f} MiB/s (sha512) on its own.",
        "",
        "Code measured: " + _code_line(data.get("code", {})),
        "",
        "Variants: **cross** = POST on A, one chunked PATCH with the whole layer on B, empty "
        "`PUT ?digest=` on C; **same** = PUT on B (the instance that received the bytes); "
        "**sha512-cross** = cross with `POST ?digest-algorithm=sha512` and `PUT ?digest=sha512:…`. "
        "Each push is then checked by HEAD (Content-Length) and, in the first repetition, by a GET "
        "with curl following the redirect (digest of the stream).",
        "",
    ]
    after = runs.get("after")
    if after:
        cross = after["summary"].get("cross", {}).get("put_s")
        if cross:
            met = "yes" if cross["max"] < PUT_GOAL_S else "no"
            lines += [f"**Goal** (issue 8): the PUT's own time across instances under {PUT_GOAL_S:.0f} s "
                      f"for a {after['size'] // MiB} MiB layer: median {cross['median']:.3f} s, "
                      f"max {cross['max']:.3f} s — met: {met}.", ""]
    lines += ["## Times, seconds: median (min–max)", "",
              "| code | layer | variant | n ok | POST | PATCH | PATCH MiB/s | PUT |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs.values():
        for variant, metrics in run["summary"].items():
            ok = sum(1 for p in run["pushes"] if p["variant"] == variant and "error" not in p)
            total = sum(1 for p in run["pushes"] if p["variant"] == variant)
            lines.append(f"| {run['title']} | {run['size'] // MiB} MiB | {variant} | {ok}/{total} | "
                         f"{_cell(metrics, 'post_s')} | {_cell(metrics, 'patch_s', 2)} | "
                         f"{_cell(metrics, 'patch_mib_s', 0)} | {_cell(metrics, 'put_s')} |")
    lines += ["", "## Peak RSS of each Berth instance (process tree, MB; A / B / C)", "",
              "| code | idle at start | peak during any push | VmHWM at end | idle at end |", "|---|---|---|---|---|"]
    for run in runs.values():
        done = [p for p in run["pushes"] if "rss_peak" in p]
        peak = {name: max((p["rss_peak"][name] for p in done), default=0) for name in INSTANCES}
        lines.append(f"| {run['title']} | {_mb(run['idle_rss_before'])} | {_mb(peak)} | "
                     f"{_mb(run['vm_hwm'])} | {_mb(run['idle_rss_after'])} |")
    for run in runs.values():
        checks = [p for p in run["pushes"] if "get_digest_ok" in p]
        if checks:
            lines += ["", f"GET with curl -L, digest of the stream, {run['title']}: " + ", ".join(
                f"{p['variant']} {'ok' if p['get_digest_ok'] else 'WRONG'} ({p['get_s']:.1f} s)" for p in checks)
                + "."]
    lines += ["", "Load average (1 min) at start / end of each run, a sign of other work on the machine: "
              + "; ".join(f"{run['title']} {run['load_average']['start'][0]:.1f} / {run['load_average']['end'][0]:.1f}"
                          for run in runs.values()) + "."]
    errors = [(run["title"], p) for run in runs.values() for p in run["pushes"] if "error" in p]
    lines += ["", "## Errors", ""]
    if not errors:
        lines.append("None: every request answered as expected (202, 202, 201, HEAD 200 with the right size).")
    for title, p in errors:
        e = p["error"]
        lines += [f"- {title}, {p['variant']}, repetition {p['repetition'] + 1}: {e['step']} "
                  f"`{e['request']}` -> {e['status']}", "", "  ```", *(f"  {x}" for x in e["body"].splitlines()[:20]),
                  "  ```"]
    for run in runs.values():
        if run.get("note"):
            lines += ["", f"Note ({run['title']}): {run['note']}"]
    path = RESULTS / f"{stamp}-cross-instance.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cross_instance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="layer size (default 1024)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--before", metavar="REF", help="also run the git commit REF (e.g. HEAD) for comparison")
    parser.add_argument("--before-size-mib", type=int, help="layer size for --before (default: --size-mib)")
    parser.add_argument("--before-repetitions", type=int, help="repetitions for --before (default: --repetitions)")
    args = parser.parse_args()
    started = datetime.now(UTC)
    work = WORK / f"cross-instance-{started:%Y%m%d-%H%M%S}"
    head = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", *SERVED)
    # Resolved now: a commit made while this runs must not change what --before measures.
    before = git("rev-parse", "--verify", f"{args.before}^{{commit}}") if args.before else None
    data: dict[str, Any] = {
        "command": " ".join([".venv/bin/python -m bench.cross_instance", *map(shlex.quote, sys.argv[1:])]),
        "args": vars(args), "started": started.isoformat(), "machine": machine(),
        "client_mib_s": client_floor(), "runs": {},
        # What "after" ran: HEAD plus any uncommitted change to the served code (its diff's hash).
        "code": {"head": git("rev-parse", "HEAD"), "changed": changed.splitlines(), "before": before,
                 "diff_sha256": hashlib.sha256(git("diff", "HEAD", "--", *SERVED).encode()).hexdigest()},
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "served.diff").write_text(git("diff", "HEAD", "--", *SERVED) + "\n")
    print(f"bench: three instances on one Azurite; logs and the served code's diff in {work}", flush=True)
    run = measure(PROJECT_ROOT, work / "after", args.size_mib * MiB, args.repetitions, "after")
    run["title"] = f"working tree at {head}" + (" + uncommitted registry changes" if changed else "")
    run["summary"] = summarize(run)
    data["runs"]["after"] = run
    if before:
        tree = Path(tempfile.mkdtemp(prefix="berth-before-")) / "tree"
        git("worktree", "add", "--detach", str(tree), before)
        try:
            check_imports_from(tree)
            size = (args.before_size_mib or args.size_mib) * MiB
            repetitions = args.before_repetitions or args.repetitions
            run = measure(tree, work / "before", size, repetitions, "before")
            named = "" if before.startswith(args.before) else f" ({args.before})"
            run["title"] = f"before: {before[:7]}{named}"
            if size != args.size_mib * MiB:
                run["note"] = f"the old code was measured with a {size // MiB} MiB layer, not {args.size_mib} MiB."
            run["summary"] = summarize(run)
            data["runs"]["before"] = run
        finally:
            git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(tree.parent, ignore_errors=True)
    report = write_report(data, started)
    print(report.read_text())
    print(f"bench: wrote {report} and {report.with_suffix('.json')}")
    failed = any("error" in p for p in data["runs"]["after"]["pushes"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
