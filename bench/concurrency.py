"""What bounds `perInstanceConcurrency`: one Berth instance's memory per streaming layer upload,
and what a burst of small reads saturates.

The Flex Consumption setting (infra/main.bicep, `httpPerInstanceConcurrency`, 32) was reasoned
as "(BERTH_BLOCKS_IN_FLIGHT + 1) x BERTH_BLOCK_SIZE per streaming layer upload"; this
measures it. One Azurite (disk-backed by default, in a temp dir: the uploads add up to several
GiB) and ONE Berth instance on it (`python -m registry serve`, one uvicorn process, redirect
mode, auth off, default block settings), both on loopback; the client is this process.

1. Uploads: for N in `--uploads` (1, 8, 16, 32, 64), N clients at once each push a distinct
   `--size-mib` (64) MiB random layer docker-style: POST, one chunked PATCH with the whole
   body, empty PUT ?digest=. Each layer is an AES-CTR keystream generated and hashed 1 MiB at
   a time while it is sent (bench/cross_instance.py RandomLayer), never held whole. Every PUT
   must answer 201 with the layer's digest, and a HEAD afterwards the right Content-Length.
2. Reads: one small image (bench/push_ab.py one_round), then GET of its manifest by tag from
   c = `--read-concurrency` (8, 32, 64, 128) concurrent clients for `--read-seconds` (5) each.

All clients are httpx.AsyncClient tasks on one event loop in this process. httpx costs ~2.5 ms of
client CPU per small request here (the server's own cost is a fraction of that): the reads are
also run with wrk (C, one thread; if installed; `--no-wrk` skips it), whose table is the one that
shows what bounds Berth and Azurite. This venv's anyio has no sniffio, so httpcore tries to
import sniffio on every request (a search of sys.path each time); the module is marked absent
in sys.modules here, which makes that failure cheap. Every 50 ms a thread samples the RSS
(VmRSS, process tree) of Berth and Azurite, and the CPU time (utime + stime, process tree) of
Berth, Azurite and the client (this process, or wrk): CPU is % of one core, the mean over the
workload and the highest 1 s window; `others` is what the rest of the machine used meanwhile
(/proc/stat), and each level first waits (`--quiet-wait`, 60 s at most) for the machine to be
idle, since a shared machine skews CPU-bound numbers. Per-upload memory is (peak - idle) / N,
idle being the instance's RSS once warmed, before any upload; the slope between the two largest
N is given too. `--berth-env KEY=VALUE` adds to Berth's environment (e.g. glibc's
MALLOC_MMAP_THRESHOLD_); `--read-concurrency ""` skips the reads. About 3 minutes by default.

    .venv/bin/python -m bench.concurrency [--uploads 1,8,16,32,64] [--size-mib 64]
        [--read-concurrency 8,32,64,128] [--read-seconds 5] [--memory-azurite] [--no-wrk]
        [--quiet-wait 60] [--berth-env KEY=VALUE ...]

Writes bench/results/<UTC date-time>-concurrency.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]  # see the docstring

import httpx

from bench.cross_instance import RandomLayer
from bench.push_ab import OCI_MANIFEST, RESULTS, one_round
from bench.targets import start_berth
from registry.azurite import PROJECT_ROOT, Azurite
from registry.settings import load_settings

MiB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05
INSTANCE_MIB = 2048  # a Flex Consumption instance size ("2048 MB"), taken as MiB
HOST_MIB = 300  # left for the Functions host and worker around Berth
# The shipped reasoning, at the default settings: (BERTH_BLOCKS_IN_FLIGHT + 1) x BERTH_BLOCK_SIZE.
ESTIMATE_MIB = (load_settings({}).blocks_in_flight + 1) * load_settings({}).block_size // MiB


def _tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending += [int(c) for c in children.read().split()]
        except FileNotFoundError:
            continue
    return pids


def tree_usage(pid: int, tree: bool = True) -> tuple[int, float]:
    """(RSS bytes, CPU seconds used so far) of a process and (`tree`) its descendants."""
    rss, cpu = 0, 0.0
    for current in _tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            continue
    return rss, cpu


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat less idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def wait_quiet(limit: float, threshold: float = 25.0) -> float:
    """Wait (at most `limit` s) until the machine has been under `threshold` % of a core busy for
    a second, Berth and Azurite idle included: other work on the machine skews the numbers.
    Returns the last second's busy %."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = (machine_busy() - before) * 100
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                print(f"  (machine still {busy:.0f}% busy with other work; measuring anyway)", flush=True)
            return busy
        time.sleep(2.0)


def cpu_row(sampler: Sampler) -> dict[str, dict[str, float]]:
    """Each process's CPU, and `others`: what the rest of the machine used meanwhile."""
    cpu = {name: sampler.cpu(name) for name in (*sampler.pids, "machine")}
    machine = cpu.pop("machine")
    cpu["others"] = {key: max(0.0, machine[key] - sum(v[key] for v in cpu.values())) for key in ("mean",)}
    cpu["others"]["peak_1s"] = cpu["others"]["mean"]
    return cpu


class Sampler:
    """RSS and CPU time of named processes every 50 ms while the `with` block runs."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.samples: list[tuple[float, dict[str, tuple[int, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> None:
        # The client is this process alone (Berth and Azurite are its children), or wrk.
        now = {name: tree_usage(pid, tree=name != "client") for name, pid in self.pids.items()}
        if self.samples:  # a process that has exited (wrk) keeps its last reading
            now = {name: value if value != (0, 0.0) else self.samples[-1][1][name] for name, value in now.items()}
        now["machine"] = (0, machine_busy())
        self.samples.append((time.perf_counter(), now))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def peak_rss(self, name: str) -> int:
        return max(values[name][0] for _, values in self.samples)

    def median_rss(self, name: str) -> int:
        return int(statistics.median(values[name][0] for _, values in self.samples))

    def cpu(self, name: str) -> dict[str, float]:
        """Mean CPU (% of one core) over the whole block, and the highest over any ~1 s window."""
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        mean = (last[name][1] - first[name][1]) / (t1 - t0) * 100 if t1 > t0 else 0.0
        peak, j = 0.0, 0
        for i, (tb, b) in enumerate(self.samples):
            while j + 1 < i and tb - self.samples[j + 1][0] >= 1.0:
                j += 1
            ta, a = self.samples[j]
            if tb - ta >= 1.0:
                peak = max(peak, (b[name][1] - a[name][1]) / (tb - ta) * 100)
        return {"mean": mean, "peak_1s": max(peak, mean)}


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


async def upload_one(client: httpx.AsyncClient, repository: str, size: int) -> dict[str, Any]:
    layer = RandomLayer(size, "sha256")
    result: dict[str, Any] = {"statuses": []}
    start = time.perf_counter()
    try:
        response = await client.post(f"/v2/{repository}/blobs/uploads/")
        result["statuses"].append(response.status_code)
        if response.status_code != 202:
            result["error"] = f"POST {response.status_code}: {response.text[:300]}"
            return result
        location = response.headers["Location"]

        async def body():  # noqa: ANN202  an async generator: httpx sends it chunked
            for chunk in layer.chunks():
                yield chunk

        response = await client.patch(location, content=body(), headers={"Content-Type": "application/octet-stream"})
        result["statuses"].append(response.status_code)
        if response.status_code != 202 or response.headers.get("Range") != f"0-{size - 1}":
            result["error"] = (f"PATCH {response.status_code} Range {response.headers.get('Range')}: "
                               f"{response.text[:300]}")
            return result
        location = response.headers.get("Location", location)
        response = await client.put(httpx.URL(location).copy_merge_params({"digest": layer.digest}))
        result["statuses"].append(response.status_code)
        if response.status_code != 201 or response.headers.get("Docker-Content-Digest") != layer.digest:
            result["error"] = f"PUT {response.status_code}: {response.text[:300]}"
            return result
        result["digest"] = layer.digest
    except httpx.HTTPError as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        result["seconds"] = time.perf_counter() - start
    return result


async def upload_batch(url: str, n: int, size: int, repository: str) -> tuple[float, list[dict[str, Any]], int]:
    """N uploads at once; (wall seconds, each upload's result, HEADs answering the right size)."""
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(upload_one(client, repository, size) for _ in range(n)))
        wall = time.perf_counter() - start
        heads = await asyncio.gather(*(client.head(f"/v2/{repository}/blobs/{r['digest']}")
                                       for r in results if "digest" in r))
    verified = sum(1 for h in heads if h.status_code == 200 and h.headers.get("Content-Length") == str(size))
    return wall, results, verified


async def read_load(url: str, path: str, c: int, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0), limits=limits,
                                 headers={"Accept": OCI_MANIFEST}) as client:
        await asyncio.gather(*(client.get(path) for _ in range(c)))  # open the connections
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    response = await client.get(path)
                except httpx.HTTPError as error:
                    errors[type(error).__name__] += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors[str(response.status_code)] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        wall = time.perf_counter() - start
    return {"c": c, "ok": len(latencies), "errors": dict(errors), "wall_s": wall, "rps": len(latencies) / wall,
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


def wrk_load(url: str, c: int, seconds: float, pids: dict[str, int]) -> dict[str, Any]:
    """The same reads with wrk (one thread), its own latency percentiles; wrk sampled as the client."""
    with subprocess.Popen(["wrk", "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s", "--latency",
                           "-H", f"Accept: {OCI_MANIFEST}", url], stdout=subprocess.PIPE, text=True) as process:
        with Sampler({**pids, "client": process.pid}) as sampler:
            out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited {process.returncode}: {out}")

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:(.*)", out)
    return {"c": c, "rps": float(rps.group(1)) if rps else float("nan"), "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
            "peak_rss_mib": sampler.peak_rss("berth") / MiB, "cpu": cpu_row(sampler),
            "raw": out}


def commit() -> str:
    """HEAD's commit read from .git (no git command run), or '?'."""
    try:
        git = PROJECT_ROOT / ".git"
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:7]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:7]
    except OSError:
        pass
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", default="1,8,16,32,64", help="concurrent uploads, comma-separated")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--read-concurrency", default="8,32,64,128")
    parser.add_argument("--read-seconds", type=float, default=5.0)
    parser.add_argument("--memory-azurite", action="store_true", help="Azurite in memory instead of on disk")
    parser.add_argument("--no-wrk", action="store_true", help="do not repeat the reads with wrk")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS",
                        help="before each level, wait up to this long for the machine to be idle")
    parser.add_argument("--berth-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra environment variable for the Berth process (repeatable)")
    args = parser.parse_args()
    ns = [int(n) for n in args.uploads.split(",")]
    cs = [int(c) for c in args.read_concurrency.split(",") if c]  # "" skips the reads
    size = args.size_mib * MiB
    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    settings = load_settings({k: v for k, v in os.environ.items() if k.startswith("BERTH_BLOCK")})
    work = Path(tempfile.mkdtemp(prefix="berth-concurrency-"))
    azurite = Azurite(location=None if args.memory_azurite else work / "azurite")
    uploads: list[dict[str, Any]] = []
    reads: list[dict[str, Any]] = []
    wrk_reads: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        with azurite:
            extra = dict(item.split("=", 1) for item in args.berth_env)
            berth = start_berth(azurite, "redirect", work / "berth.log", **extra)
            assert azurite.process is not None
            pids = {"berth": berth.process.pid, "azurite": azurite.process.pid, "client": os.getpid()}
            try:
                # Warm: imports, clients, tables, one small upload of each kind.
                one_round(berth.url, 2, "warm")
                asyncio.run(upload_batch(berth.url, 1, 4 * MiB, "bench/warm"))
                time.sleep(1)
                with Sampler(pids) as idle:
                    time.sleep(1.5)
                idle_rss = idle.median_rss("berth")
                print(f"idle: Berth {idle_rss / MiB:.0f} MiB, Azurite {idle.median_rss('azurite') / MiB:.0f} MiB",
                      flush=True)
                for n in ns:
                    quiet = wait_quiet(args.quiet_wait)
                    with Sampler(pids) as before:
                        time.sleep(0.5)
                    with Sampler(pids) as sampler:
                        wall, results, verified = asyncio.run(upload_batch(berth.url, n, size, f"bench/up{n}"))
                    times = [r["seconds"] for r in results if "error" not in r]
                    ok = sum(1 for r in results if "error" not in r)
                    peak = sampler.peak_rss("berth")
                    row = {
                        "n": n, "busy_before": quiet, "ok": ok, "verified": verified, "wall_s": wall,
                        "errors": [r["error"] for r in results if "error" in r][:5],
                        "statuses": dict(Counter(str(tuple(r["statuses"])) for r in results)),
                        "rss_before_mib": before.median_rss("berth") / MiB, "peak_rss_mib": peak / MiB,
                        "increment_mib": (peak - idle_rss) / MiB, "per_upload_mib": (peak - idle_rss) / MiB / n,
                        "per_upload_from_before_mib": (peak - before.median_rss("berth")) / MiB / n,
                        "mib_s": ok * size / MiB / wall,
                        "p50_s": percentile(times, 0.5), "p95_s": percentile(times, 0.95),
                        "azurite_peak_rss_mib": sampler.peak_rss("azurite") / MiB,
                        "cpu": cpu_row(sampler),
                    }
                    uploads.append(row)
                    print(f"uploads N={n}: {ok}/{n} ok (201, digest), {verified} HEAD-verified, "
                          f"{wall:.1f} s, {row['mib_s']:.0f} MiB/s, peak RSS {row['peak_rss_mib']:.0f} MiB "
                          f"(+{row['increment_mib']:.0f}, {row['per_upload_mib']:.1f}/upload), p50 "
                          f"{row['p50_s']:.1f} s p95 {row['p95_s']:.1f} s, CPU% "
                          + ", ".join(f"{k} {v['mean']:.0f}/{v['peak_1s']:.0f}" for k, v in row["cpu"].items())
                          + (f"  ERRORS {row['errors']}" if row["errors"] else ""), flush=True)
                    time.sleep(1)
                after_uploads_rss = tree_usage(berth.process.pid)[0]
                with open(f"/proc/{berth.process.pid}/status") as status:
                    hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

                path = "/v2/ab/read-0/manifests/v0"
                rss_before_reads = tree_usage(berth.process.pid)[0]
                if cs:
                    one_round(berth.url, 1, "read")  # repository ab/read-0, tag v0
                    check = httpx.get(berth.url + path, headers={"Accept": OCI_MANIFEST})
                    assert check.status_code == 200 and json.loads(check.content)["schemaVersion"] == 2, check.text
                for c in cs:
                    quiet = wait_quiet(args.quiet_wait)
                    with Sampler(pids) as sampler:
                        row = asyncio.run(read_load(berth.url, path, c, args.read_seconds))
                    row["busy_before"] = quiet
                    row.update(peak_rss_mib=sampler.peak_rss("berth") / MiB,
                               azurite_peak_rss_mib=sampler.peak_rss("azurite") / MiB,
                               cpu=cpu_row(sampler))
                    reads.append(row)
                    print(f"reads c={c}: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.1f} ms, p99 "
                          f"{row['p99_ms']:.1f} ms, errors {row['errors']}, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                          "CPU% " + ", ".join(f"{k} {v['mean']:.0f}/{v['peak_1s']:.0f}" for k, v in row["cpu"].items()),
                          flush=True)
                if use_wrk:
                    for c in cs:
                        quiet = wait_quiet(args.quiet_wait)
                        row = wrk_load(berth.url + path, c, args.read_seconds, pids)
                        row["busy_before"] = quiet
                        wrk_reads.append(row)
                        print(f"wrk c={c}: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.1f} ms, p99 "
                              f"{row['p99_ms']:.1f} ms, non-2xx {row['non_2xx']}, CPU% "
                              + ", ".join(f"{k} {v['mean']:.0f}/{v['peak_1s']:.0f}" for k, v in row["cpu"].items()),
                              flush=True)
                final_rss = tree_usage(berth.process.pid)[0]
            finally:
                berth.stop()
        log_tail = (work / "berth.log").read_text(errors="replace").splitlines()[-20:]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stamp = datetime.now(UTC)
    report = {"name": f"{stamp:%Y-%m-%d-%H%M}-concurrency", "commit": commit(), "date": stamp.isoformat(),
              "size_mib": args.size_mib,
              "azurite": "in memory" if args.memory_azurite else "disk-backed (temp dir)",
              "block_size_mib": settings.block_size / MiB, "blocks_in_flight": settings.blocks_in_flight,
              "idle_rss_mib": idle_rss / MiB, "rss_after_uploads_mib": after_uploads_rss / MiB,
              "vm_hwm_mib": hwm / MiB, "rss_before_reads_mib": rss_before_reads / MiB,
              "final_rss_mib": final_rss / MiB, "uploads": uploads, "reads": reads,
              "wrk_reads": [{k: v for k, v in r.items() if k != "raw"} for r in wrk_reads],
              "berth_log_tail": log_tail, "run_s": time.monotonic() - began}
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / report["name"]
    base.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    base.with_suffix(".md").write_text(render(report, args) + "\n")
    print(f"bench: wrote {base.with_suffix('.md')} and .json")
    return 0 if all(u["ok"] == u["n"] == u["verified"] for u in uploads) else 1


def _cpu(row: dict[str, Any], name: str) -> str:
    value = row["cpu"].get(name)
    if not value:
        return "-"
    return f"{value['mean']:.0f}" if name == "others" else f"{value['mean']:.0f} / {value['peak_1s']:.0f}"


def _cpus(row: dict[str, Any]) -> str:
    return " | ".join(_cpu(row, name) for name in ("berth", "azurite", "client", "others"))


CPU_HEADS = "CPU Berth | CPU Azurite | CPU client | CPU others |"


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    uploads, reads = report["uploads"], report["reads"]
    cpus = os.cpu_count()
    lines = [
        f"# What bounds perInstanceConcurrency ({report['commit']}, {report['date'][:16].replace('T', ' ')} UTC)", "",
        f"`python -m bench.concurrency --uploads {args.uploads} --size-mib {args.size_mib} --read-concurrency "
        f"{args.read_concurrency or chr(34) * 2} --read-seconds {args.read_seconds:g}"
        f"{' --memory-azurite' if args.memory_azurite else ''}{' --no-wrk' if args.no_wrk else ''}"
        f"{''.join(' --berth-env ' + item for item in args.berth_env)}` "
        f"(raw: `{report['name']}.json`). Machine: {cpus} cores, Python "
        f"{platform.python_version()}; one Azurite ({report['azurite']}) and ONE Berth instance (uvicorn, one "
        f"process, redirect mode, auth off, block {report['block_size_mib']:g} MiB x "
        f"{report['blocks_in_flight']} in flight); the client (httpx.AsyncClient, one event loop; for the "
        "second read table wrk) on the same two cores. RSS is the process tree's VmRSS sampled every 50 ms; "
        "CPU is % of one core, mean over the workload / highest 1 s window; `others` is the rest of the machine "
        "meanwhile (mean): work that is not this benchmark's (the machine is shared; each level first waits up to "
        f"{args.quiet_wait:g} s for it to be idle), plus kernel time no process is charged for.", "",
        f"## Streaming layer uploads ({args.size_mib} MiB each, POST + chunked PATCH + PUT ?digest=)", "",
        f"Berth idle RSS (warmed, before any upload): {report['idle_rss_mib']:.0f} MiB.", "",
        "| N | ok (201 + digest, HEAD size) | Berth RSS before | peak RSS | peak - idle | per upload | "
        f"aggregate MiB/s | p50 upload | p95 upload | {CPU_HEADS} Azurite peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for u in uploads:
        lines.append(
            f"| {u['n']} | {u['ok']}/{u['n']}, {u['verified']}/{u['n']} | {u['rss_before_mib']:.0f} MiB | "
            f"{u['peak_rss_mib']:.0f} MiB | {u['increment_mib']:.0f} MiB | {u['per_upload_mib']:.1f} MiB | "
            f"{u['mib_s']:.0f} | {u['p50_s']:.1f} s | {u['p95_s']:.1f} s | {_cpus(u)} | "
            f"{u['azurite_peak_rss_mib']:.0f} MiB |")
    lines += ["", f"After the uploads: Berth RSS {report['rss_after_uploads_mib']:.0f} MiB, VmHWM "
              f"{report['vm_hwm_mib']:.0f} MiB; at the end of the run {report['final_rss_mib']:.0f} MiB."]
    errors = [e for u in uploads for e in u["errors"]]
    if errors:
        lines += ["", "Upload errors (first few): " + "; ".join(f"`{e[:200]}`" for e in errors[:5])]
    if reads:
        lines += ["", f"## Manifest GET by tag ({args.read_seconds:g} s per level, httpx client)", "",
                  f"| c | requests/s | p50 | p99 | errors | Berth peak RSS | {CPU_HEADS}",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reads:
        lines.append(f"| {r['c']} | {r['rps']:.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
                     f"{sum(r['errors'].values()) if r['errors'] else 0} | {r['peak_rss_mib']:.0f} MiB | "
                     f"{_cpus(r)} |")
    if report["wrk_reads"]:
        lines += ["", "The same with wrk (one thread, C) as the client:", "",
                  f"| c | requests/s | p50 | p99 | non-2xx | Berth peak RSS | {CPU_HEADS}",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["wrk_reads"]:
            lines.append(f"| {r['c']} | {r['rps']:.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
                         f"{r['non_2xx']}{(' ' + r['socket_errors']) if r['socket_errors'] else ''} | "
                         f"{r['peak_rss_mib']:.0f} MiB | {_cpus(r)} |")
    lines += ["", "## Reading", "", *summary(report)]
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> list[str]:
    """The reading paragraphs, from the numbers (the md's last section)."""
    uploads, reads = report["uploads"], report["reads"]
    text = []
    if uploads:
        big = [u for u in uploads if u["n"] >= 8] or uploads
        per = statistics.median(u["per_upload_mib"] for u in big)
        top = sorted(uploads, key=lambda u: u["n"])[-2:]
        slope = ((top[1]["peak_rss_mib"] - top[0]["peak_rss_mib"]) / (top[1]["n"] - top[0]["n"])
                 if len(top) == 2 and top[1]["n"] > top[0]["n"] else per)
        worst = max(slope, *(u["per_upload_mib"] for u in top))
        budget = INSTANCE_MIB - HOST_MIB - report["idle_rss_mib"]
        peaks = ", ".join(f"{u['peak_rss_mib']:.0f} MiB at N = {u['n']}" for u in uploads)
        berth_ms = statistics.median(u["cpu"]["berth"]["mean"] * 10 / u["mib_s"] for u in big if u["mib_s"])
        busy = statistics.median(sum(v["mean"] for v in u["cpu"].values()) for u in big)
        largest = max(("berth", "azurite", "client"),
                      key=lambda name: statistics.median(u["cpu"][name]["mean"] for u in big))
        text += [
            f"**Uploads.** Per streaming upload Berth holds {per:.1f} MiB (median over N >= 8 of (peak - idle) / N; "
            f"{min(u['per_upload_mib'] for u in big):.1f}-{max(u['per_upload_mib'] for u in big):.1f}; the slope "
            f"between N = {top[0]['n']} and {top[-1]['n']} is {slope:.1f} MiB per upload), against the "
            f"{ESTIMATE_MIB} MiB estimate ((BERTH_BLOCKS_IN_FLIGHT + 1) x BERTH_BLOCK_SIZE). Peak RSS: {peaks}. "
            f"A {INSTANCE_MIB} MB instance less ~{HOST_MIB} MB for the Functions host and worker and Berth's idle "
            f"{report['idle_rss_mib']:.0f} MiB leaves {budget:.0f} MiB: {int(budget // worst)} concurrent streaming "
            f"uploads at {worst:.1f} MiB each (the largest of the slope and the per-upload figure at the two "
            f"largest N), {int(budget // per)} at the median. After the bursts Berth's RSS is "
            f"{report['rss_after_uploads_mib']:.0f} MiB (idle: {report['idle_rss_mib']:.0f} MiB, highest peak "
            f"{report['vm_hwm_mib']:.0f} MiB)"
            + (": the memory is not returned to the system (the next burst reuses it)."
               if report["rss_after_uploads_mib"] - report["idle_rss_mib"]
               > 0.25 * (report["vm_hwm_mib"] - report["idle_rss_mib"]) else ": returned to the system."),
            "",
            f"Upload throughput stays near {statistics.median(u['mib_s'] for u in big):.0f} MiB/s whatever N (each "
            f"upload's time grows with N). The machine is the bound: the processes together use {busy:.0f}% of "
            f"the {os.cpu_count()} cores' {100 * (os.cpu_count() or 1)}% (median over N >= 8), {largest} the "
            f"largest share. Berth spends {berth_ms:.1f} ms of CPU per MiB received (hashing, copying, staging), "
            f"about {1000 / berth_ms:.0f} MiB/s per core.",
            "",
        ]
    for label, rows in (("wrk", report["wrk_reads"]), ("httpx", reads)):
        if not rows:
            continue
        clean = [r for r in rows if r["cpu"]["others"]["mean"] < 25] or rows
        best = max(clean, key=lambda r: r["rps"])
        busiest = max(("berth", "azurite", "client"), key=lambda name: best["cpu"][name]["mean"])
        cpu = ", ".join(f"{name} {best['cpu'][name]['mean']:.0f}%" for name in ("berth", "azurite", "client"))
        noisy = [str(r["c"]) for r in rows if r["cpu"]["others"]["mean"] >= 25]
        pegged = [name for name in ("berth", "azurite", "client") if best["cpu"][name]["mean"] >= 85]
        total = sum(v["mean"] for v in best["cpu"].values())
        text.append(
            f"**Reads, {label} as the client.** Best {best['rps']:.0f} requests/s (c = {best['c']}, p99 "
            f"{best['p99_ms']:.0f} ms; requests/s at c = "
            + ", ".join(f"{r['c']}: {r['rps']:.0f}" for r in rows)
            + f"). There the processes use {cpu} of a core (mean; the machine {total:.0f}% of "
            f"{100 * (os.cpu_count() or 1)}%), the busiest being {busiest}"
            + (f"; at about one full core: {', '.join(pegged)} (one event loop each)"
               if pegged else "")
            + f". Berth's RSS: {report.get('rss_before_reads_mib', 0):.0f} MiB before the reads, "
            f"{max(r['peak_rss_mib'] for r in rows):.0f} MiB peak: memory does not bound reads."
            + (f" Levels c = {', '.join(noisy)} ran while other work took >= 25% of a core: not comparable."
               if noisy else ""))
        text.append("")
    return text


if __name__ == "__main__":
    sys.exit(main())
