"""Read scaling (issue #15): blob HEAD against the CNCF reference registry, and manifest GET by tag
from three Berth instances behind a round-robin nginx against one instance.

1. Blob HEAD at c = `--head-c` (32): one Berth instance (`python -m registry serve`, redirect mode,
   auth off) on an in-memory Azurite, and the CNCF reference registry (Debian's `docker-registry`,
   distribution 2.8, filesystem storage in a temp dir, in-memory blob descriptor cache;
   bench/targets.py). Both get the same small image (10 KiB layers, pushed with httpx: monolithic
   POST ?digest=, manifest PUT by tag); wrk then sends HEAD /v2/<repo>/blobs/<layer digest>.
   The figure is Berth requests/s / CNCF requests/s (target >= 1.0), with p50 / p99.
2. Manifest GET by tag at c = `--get-c` (64), three topologies on the SAME Azurite and the same
   image: one Berth instance direct; one instance behind nginx; `--instances` (3) instances behind
   nginx. nginx is the test suite's round-robin front (tests/front.py: one worker, every request
   may land on another instance, keep-alive to the backends), with its per-request access log
   turned off and the upstream keep-alive pool raised to 256 so the proxy itself is not the
   bound. The figure is 3-behind-nginx / 1-behind-nginx (the like-for-like ratio: the proxy hop
   is in both), and 3-behind-nginx / 1-direct (what an operator adding a proxy and instances
   gets).

Load generators: for the manifest GETs wrk (C, one thread, `--latency`). wrk 4.1 cannot send
HEAD (its parser then waits for the body that Content-Length announces), so the blob HEADs come
from a lean client in this process: uvloop, raw HTTP/1.1 on c keep-alive connections, each
sending its next HEAD as soon as the previous answer's headers end (no httpx: its ~2.5 ms of CPU
per request would be the bound; see bench/concurrency.py). Both give p50/p99 of the 200s. Each
level runs `--seconds` (10) per round, `--rounds` (3) rounds with the targets' order alternating;
the tables give every round and the median. While wrk runs, a thread samples (every 50 ms, /proc)
the CPU time of each process tree: every Berth instance, Azurite, docker-registry, nginx (master
and worker), and wrk; CPU is % of one core, mean over the run. `others` is the rest of the
machine meanwhile (/proc/stat busy less the named processes). The sampler and the CPU table come
from bench/concurrency.py. Everything (servers, proxy, wrk) shares the machine's cores, which is
what bounds part 2: see the report's reading. About 3-4 minutes with the defaults.

    .venv/bin/python -m bench.read_scaling [--seconds 10] [--rounds 3] [--head-c 32] [--get-c 64]
        [--instances 3] [--quiet-wait 10]

Writes bench/results/<UTC date-time>-read-scaling.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.concurrency import Sampler, commit, cpu_row, percentile, wait_quiet
from bench.push_ab import OCI_MANIFEST, RESULTS
from bench.targets import Target, start_berth, start_cncf
from registry.azurite import Azurite
from tests.front import Front, find_nginx


class BenchFront(Front):
    """tests/front.py's nginx, without the per-request access log and with a larger keep-alive
    pool to the backends (c = 64 requests in flight would otherwise churn connections)."""

    def _write_config(self) -> Path:
        config = super()._write_config()
        text = config.read_text()
        text = re.sub(r"access_log [^;]*;", "access_log off;", text, count=1)
        text = text.replace("keepalive 32;", "keepalive 256;")
        config.write_text(text)
        return config


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def push_image(url: str, repository: str, tag: str) -> str:
    """One small image (two 10 KiB layers and a config) by plain HTTP; returns a layer's digest.
    Monolithic POST ?digest=; a registry answering 202 instead gets the body by PUT ?digest=."""
    base, layer = os.urandom(10 * 1024), os.urandom(10 * 1024)
    config = json.dumps({"os": "linux", "architecture": "amd64"}).encode()
    with httpx.Client(base_url=url, timeout=60) as http:
        for blob in (base, layer, config):
            digest = _descriptor("", blob)["digest"]
            response = http.post(f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=blob)
            if response.status_code == 202:  # distribution 2.8: a fresh session, then PUT the body
                response = http.post(f"/v2/{repository}/blobs/uploads/")
                location = response.headers["Location"]
                location += ("&" if "?" in location else "?") + f"digest={digest}"
                response = http.put(location, content=blob, headers={"Content-Type": "application/octet-stream"})
            assert response.status_code == 201, (response.status_code, response.text)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
                           "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", base),
                                      _descriptor("application/vnd.oci.image.layer.v1.tar", layer)]}).encode()
        response = http.put(f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 201, (response.status_code, response.text)
    return _descriptor("", layer)["digest"]


def run_wrk(url: str, c: int, seconds: float, pids: dict[str, int], headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """wrk, one thread, c connections; its requests/s and latency percentiles, and each process's CPU."""
    command = ["wrk", "-t1", f"-c{c}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    for header in headers:
        command += ["-H", header]
    with subprocess.Popen([*command, url], stdout=subprocess.PIPE, text=True) as process:
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
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:(.*)", out)
    return {"c": c, "rps": float(rps.group(1)) if rps else float("nan"),
            "requests": int(total.group(1)) if total else 0,
            "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
            "cpu": cpu_row(sampler)}


class _HeadConnection(asyncio.Protocol):
    """One keep-alive connection sending HEAD requests one after another (a HEAD answer has no
    body: the response ends at the blank line after its headers)."""

    def __init__(self, request: bytes, deadline: float, latencies: list[float], statuses: Counter[str],
                 done: asyncio.Future[None]):
        self.request, self.deadline, self.latencies, self.statuses, self.done = (
            request, deadline, latencies, statuses, done)
        self.buffer = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.deadline:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        now = time.perf_counter()
        status = self.buffer[9:12].decode()
        self.buffer = self.buffer[end + 4:]
        if status == "200":
            self.latencies.append(now - self.sent)
        self.statuses[status] += 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.statuses[type(exc).__name__] += 1
        if not self.done.done():
            self.done.set_result(None)


async def _head_load(host: str, port: int, path: str, c: int, seconds: float) -> dict[str, Any]:
    request = f"HEAD {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = time.perf_counter()
    deadline = start + seconds
    futures = [loop.create_future() for _ in range(c)]
    for future in futures:
        await loop.create_connection(
            lambda future=future: _HeadConnection(request, deadline, latencies, statuses, future), host, port)
    await asyncio.gather(*futures)
    wall = time.perf_counter() - start
    return {"c": c, "rps": len(latencies) / wall, "requests": sum(statuses.values()),
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "non_2xx": sum(n for s, n in statuses.items() if s != "200"),
            "socket_errors": ", ".join(f"{s} {n}" for s, n in statuses.items() if not s.isdigit())}


def run_head(url: str, c: int, seconds: float, pids: dict[str, int]) -> dict[str, Any]:
    """Blob HEADs from a lean asyncio client (uvloop, raw HTTP/1.1 on c keep-alive connections) in
    this process: wrk 4.1 cannot do HEAD (its parser waits for the body Content-Length announces)."""
    parsed = httpx.URL(url)
    assert parsed.host and parsed.port
    with Sampler({**pids, "client": os.getpid()}) as sampler:
        row = uvloop.run(_head_load(parsed.host, parsed.port, parsed.raw_path.decode(), c, seconds))
    row["cpu"] = cpu_row(sampler)
    return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median requests/s, p50, p99 and CPU (mean) over rounds."""
    cpu_names = rows[0]["cpu"].keys()
    return {"rps": statistics.median(r["rps"] for r in rows),
            "p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "non_2xx": sum(r["non_2xx"] for r in rows),
            "socket_errors": "; ".join(r["socket_errors"] for r in rows if r["socket_errors"]),
            "cpu": {name: statistics.median(r["cpu"][name]["mean"] for r in rows) for name in cpu_names}}


def measure(targets: dict[str, str], c: int, args: argparse.Namespace, pids: dict[str, int],
            head: bool = False, headers: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """Each target (name: url) `args.rounds` times, the order alternating between rounds."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    names = list(targets)
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            quiet = wait_quiet(args.quiet_wait)
            row = (run_head(targets[name], c, args.seconds, pids) if head
                   else run_wrk(targets[name], c, args.seconds, pids, headers=headers))
            row["busy_before"] = quiet
            rows[name].append(row)
            print(f"round {number} {name} c={c}: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, p99 "
                  f"{row['p99_ms']:.2f} ms, non-2xx {row['non_2xx']} {row['socket_errors']}, CPU% "
                  + ", ".join(f"{k} {v['mean']:.0f}" for k, v in row["cpu"].items()), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.read_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head-c", type=int, default=32, help="connections for the blob HEADs")
    parser.add_argument("--get-c", type=int, default=64, help="connections for the manifest GETs")
    parser.add_argument("--instances", type=int, default=3, help="Berth instances behind nginx")
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine to be idle")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    nginx = find_nginx()
    if nginx is None:
        print("bench: nginx is not installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="berth-read-scaling-"))
    began = time.monotonic()
    berths: list[Target] = []
    cncf: Target | None = None
    front: BenchFront | None = None
    try:
        with Azurite() as azurite:
            assert azurite.process is not None
            berths.append(start_berth(azurite, "redirect", work / "berth-0.log"))
            cncf = start_cncf(work / "cncf.log")
            repository = "scaling/app"
            digests = {name: push_image(target.url, repository, "v0")
                       for name, target in (("berth", berths[0]), ("cncf", cncf))}
            heads = {name: f"{target.url}/v2/{repository}/blobs/{digests[name]}"
                     for name, target in (("berth", berths[0]), ("cncf", cncf))}
            for name, url in heads.items():
                response = httpx.head(url)
                assert response.status_code == 200 and response.headers.get("Content-Length") == str(10 * 1024), \
                    (name, response.status_code, dict(response.headers))
                print(f"{name}: HEAD {response.status_code}, Content-Length {response.headers['Content-Length']}",
                      flush=True)
            pids = {"berth": berths[0].process.pid, "cncf": cncf.process.pid, "azurite": azurite.process.pid}
            for url in heads.values():  # warm
                run_head(url, args.head_c, 2, pids)
            head_rows = measure(heads, args.head_c, args, pids, head=True)
            cncf.stop()
            cncf = None

            for number in range(1, args.instances):
                berths.append(start_berth(azurite, "redirect", work / f"berth-{number}.log"))
            front = BenchFront(nginx, [b.host for b in berths], work / "nginx").start()
            single = BenchFront(nginx, [berths[0].host], work / "nginx-1").start()
            assert front.process is not None and single.process is not None
            path = f"/v2/{repository}/manifests/v0"
            gets = {"1 direct": berths[0].url + path, "1 behind nginx": single.url + path,
                    f"{args.instances} behind nginx": front.url + path}
            for name, url in gets.items():
                response = httpx.get(url, headers={"Accept": OCI_MANIFEST})
                assert response.status_code == 200 and json.loads(response.content)["schemaVersion"] == 2, \
                    (name, response.status_code, response.text)
            pids = {**{f"berth-{i}": b.process.pid for i, b in enumerate(berths)}, "azurite": azurite.process.pid,
                    "nginx": front.process.pid, "nginx-1": single.process.pid}
            accept = (f"Accept: {OCI_MANIFEST}",)
            for url in gets.values():  # warm every instance (imports, clients, caches)
                run_wrk(url, args.get_c, 2, pids, headers=accept)
            get_rows = measure(gets, args.get_c, args, pids, headers=accept)
            single.stop()
    finally:
        if front is not None:
            front.stop()
        if cncf is not None:
            cncf.stop()
        for berth in berths:
            berth.stop()
        logs = {p.name: p.read_text(errors="replace").splitlines()[-10:] for p in work.glob("*.log")}
        shutil.rmtree(work, ignore_errors=True)

    stamp = datetime.now(UTC)
    report = {"name": f"{stamp:%Y-%m-%d-%H%M}-read-scaling", "commit": commit(), "date": stamp.isoformat(),
              "cores": os.cpu_count(), "python": platform.python_version(),
              "args": vars(args),
              "blob_head": {"c": args.head_c, "rounds": head_rows,
                            "median": {name: median_row(rows) for name, rows in head_rows.items()}},
              "manifest_get": {"c": args.get_c, "rounds": get_rows,
                               "median": {name: median_row(rows) for name, rows in get_rows.items()}},
              "log_tails": logs, "run_s": time.monotonic() - began}
    head_median = report["blob_head"]["median"]
    report["blob_head"]["ratio"] = head_median["berth"]["rps"] / head_median["cncf"]["rps"]
    get_median = report["manifest_get"]["median"]
    many = f"{args.instances} behind nginx"
    report["manifest_get"]["ratio_vs_1_behind_nginx"] = get_median[many]["rps"] / get_median["1 behind nginx"]["rps"]
    report["manifest_get"]["ratio_vs_1_direct"] = get_median[many]["rps"] / get_median["1 direct"]["rps"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / report["name"]
    base.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    base.with_suffix(".md").write_text(render(report, args) + "\n")
    print(f"bench: wrote {base.with_suffix('.md')} and .json")
    return 0


def _table(section: dict[str, Any], cpu_names: list[str]) -> list[str]:
    lines = ["| target | requests/s (rounds) | requests/s median | p50 | p99 | non-2xx / errors | "
             + " | ".join(f"CPU {name}" for name in cpu_names) + " |",
             "|---" * (6 + len(cpu_names)) + "|"]
    for name, rows in section["rounds"].items():
        m = section["median"][name]
        errors = f"{m['non_2xx']}" + (f", {m['socket_errors']}" if m["socket_errors"] else "")
        each = ", ".join(f"{r['rps']:.0f}" for r in rows)
        lines.append(f"| {name} | {each} | **{m['rps']:.0f}** | "
                     f"{m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms | {errors} | "
                     + " | ".join(f"{m['cpu'].get(n, 0):.0f}" for n in cpu_names) + " |")
    return lines


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    head, get = report["blob_head"], report["manifest_get"]
    cores = report["cores"]
    many = f"{args.instances} behind nginx"
    berth_names = [f"berth-{i}" for i in range(args.instances)]
    lines = [
        f"# Read scaling ({report['commit']}, {report['date'][:16].replace('T', ' ')} UTC)", "",
        f"`python -m bench.read_scaling --seconds {args.seconds:g} --rounds {args.rounds} --head-c {args.head_c} "
        f"--get-c {args.get_c} --instances {args.instances}` (raw: `{report['name']}.json`; method: the module's "
        f"docstring). Machine: {cores} cores, Python {report['python']}; everything on loopback, all processes "
        "sharing the cores. Load generators: blob HEAD, a lean asyncio client in the benchmark's process (uvloop, "
        "raw HTTP/1.1; wrk 4.1 cannot send HEAD); manifest GET, wrk, one thread. Per target: every round's "
        "requests/s, then the median of the rounds (requests/s, p50, p99, CPU). CPU is % of one core (mean over "
        "the run, process tree); `client` is the load generator, `others` the rest of the machine.", "",
        f"## 1. Blob HEAD, c = {head['c']}: Berth vs the CNCF reference registry", "",
        *_table(head, ["berth", "cncf", "azurite", "client", "others"]), "",
        f"**Ratio Berth / CNCF: {head['ratio']:.2f}** (target >= 1.0).", "",
        f"## 2. Manifest GET by tag, c = {get['c']}: {args.instances} instances behind nginx vs one", "",
        *_table(get, [*berth_names, "azurite", "nginx", "nginx-1", "client", "others"]), "",
        f"`nginx` is the {args.instances}-backend front, `nginx-1` the one-backend front (each idles while the other "
        "is measured). "
        f"**Ratio {many} / 1 behind nginx: {get['ratio_vs_1_behind_nginx']:.2f}; {many} / 1 direct: "
        f"{get['ratio_vs_1_direct']:.2f}.**", "",
        "## Reading", "", *reading(report, args),
    ]
    return "\n".join(lines)


def _ms(row: dict[str, Any], name: str) -> float:
    """CPU milliseconds a process spent per request answered."""
    return row["cpu"][name] * 10 / row["rps"] if row["rps"] else float("nan")


def reading(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    head, get = report["blob_head"], report["manifest_get"]
    cores = report["cores"] or 1
    b, c = head["median"]["berth"], head["median"]["cncf"]
    b_total = sum(b["cpu"].values())
    text = [
        f"**Blob HEAD.** Berth {b['rps']:.0f} requests/s (p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms) "
        f"against CNCF {c['rps']:.0f} (p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms): ratio "
        f"{head['ratio']:.2f}, {'meeting' if head['ratio'] >= 1.0 else 'short of'} the 1.0 target. "
        f"Berth's runs: Berth {b['cpu']['berth']:.0f}% of a core ({_ms(b, 'berth'):.2f} ms of CPU per HEAD), "
        f"Azurite {b['cpu']['azurite']:.0f}% ({_ms(b, 'azurite'):.2f} ms per HEAD"
        + (": every HEAD reaches storage" if b["cpu"]["azurite"] >= 15 else ": nearly idle, the HEAD is cached")
        + f"), the client {b['cpu']['client']:.0f}%; {b_total:.0f}% of the machine's {100 * cores}%. So Berth's "
        "HEAD is bound by the two cores, shared about equally between Berth's one event loop and Azurite's. "
        f"CNCF's runs: docker-registry {c['cpu']['cncf']:.0f}% ({_ms(c, 'cncf'):.2f} ms of CPU per HEAD; a Go "
        f"process using both cores), the client {c['cpu']['client']:.0f}%: the reference registry is bound by its "
        "own CPU cost per request, which is high for a stat of a link file and a cached descriptor (a side probe: "
        "~90% of its samples in its own stripped binary, not the kernel; with GOMAXPROCS=1 it does about half "
        "the requests/s at 100%, so it is CPU work, not lock spinning; its access log is on as bench/targets.py "
        "configures it). The ratio is against this Debian build (distribution 2.8) as configured there.",
        "",
    ]
    one, prox, many = (get["median"][k] for k in ("1 direct", "1 behind nginx", f"{args.instances} behind nginx"))
    names = [f"berth-{i}" for i in range(args.instances)]
    berth_total = sum(many["cpu"][n] for n in names)
    total = sum(many["cpu"].values())
    one_total = sum(one["cpu"].values())
    shares = ", ".join(f"{many['cpu'][n]:.0f}%" for n in names)
    ratio = get["ratio_vs_1_behind_nginx"]
    verdict = ("slightly less than" if ratio < 0.95 else "slightly more than" if ratio > 1.05
               else "about the same as")
    azurite_ms = statistics.median(_ms(r, "azurite") for r in (one, prox, many))
    text.append(
        f"**Manifest GET.** One instance direct: {one['rps']:.0f} requests/s (p50 {one['p50_ms']:.1f} ms, p99 "
        f"{one['p99_ms']:.1f} ms): Berth {one['cpu']['berth-0']:.0f}% of a core ({_ms(one, 'berth-0'):.2f} ms "
        f"per GET), Azurite {one['cpu']['azurite']:.0f}% ({_ms(one, 'azurite'):.2f} ms per GET: the tag is "
        f"resolved in storage on every request), wrk {one['cpu']['client']:.0f}%; {one_total:.0f}% of the "
        f"machine's {100 * cores}%. One behind nginx: {prox['rps']:.0f} (p99 {prox['p99_ms']:.1f} ms; nginx "
        f"{prox['cpu']['nginx-1']:.0f}%). {args.instances} behind nginx: {many['rps']:.0f} (p50 "
        f"{many['p50_ms']:.1f} ms, p99 {many['p99_ms']:.1f} ms): the instances {shares} ({berth_total:.0f}% "
        f"together, {berth_total * 10 / many['rps']:.2f} ms per GET), Azurite {many['cpu']['azurite']:.0f}%, "
        f"nginx {many['cpu']['nginx']:.0f}%, wrk {many['cpu']['client']:.0f}%, others "
        f"{many['cpu']['others']:.0f}%: {total:.0f}% of {100 * cores}%. **Ratio {args.instances} / 1 behind "
        f"nginx {get['ratio_vs_1_behind_nginx']:.2f}; {args.instances} behind nginx / 1 direct "
        f"{get['ratio_vs_1_direct']:.2f}.**")
    text += ["", (
        f"**What bounds it.** On {cores} cores the machine is the bound in every topology. One instance already "
        f"fills it: Berth's single event loop near one core ({one['cpu']['berth-0']:.0f}%) plus Azurite "
        f"({one['cpu']['azurite']:.0f}%), {max(0, 100 * cores - one_total):.0f}% of a core left idle. "
        f"{args.instances} instances can only share the same two cores: each runs at about a third of a core, "
        "Azurite, nginx and wrk keep their share, and Berth's total CPU per request rises "
        f"({_ms(one, 'berth-0'):.2f} ms with one instance, {berth_total * 10 / many['rps']:.2f} ms spread over "
        f"{args.instances}: more processes switching, fewer requests per loop turn), so {args.instances} "
        f"instances behind the proxy give {verdict} one instance ({get['ratio_vs_1_behind_nginx']:.2f}x against "
        f"one behind the same proxy, {get['ratio_vs_1_direct']:.2f}x against one direct). "
        "Beyond this box, Azurite is the next ceiling: it is one Node event loop spending "
        f"~{azurite_ms:.2f} ms per manifest GET, i.e. about "
        f"{1000 / azurite_ms:.0f} requests/s at one full core however many Berth instances front it (Azure "
        "Blob Storage has no such single-process ceiling). For operators: on a 2-core host, more Berth "
        "processes do not raise read throughput; scale out with instances that each have their own core(s) "
        "(as Flex Consumption instances do), where the one-instance figure (~one core per instance) is the "
        "unit that multiplies, up to what the storage account serves.")]
    return text


if __name__ == "__main__":
    sys.exit(main())
