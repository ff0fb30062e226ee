"""Berth beside the CNCF registry and beside the storage floor, on this machine, in one run.

Run by hand: bench/run.sh (see README, Performance). Every repetition starts fresh servers on
fresh storage; the report gives medians, min/max and the target ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

from bench.images import MiB, big_image, small_images
from bench.targets import Target, start_berth, start_cncf
from registry.azurite import PROJECT_ROOT, Azurite

WORK = PROJECT_ROOT / "bench" / "work"
RESULTS = PROJECT_ROOT / "bench" / "results"
SKOPEO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
Results = dict[str, dict[str, list[float]]]


def run(*args: str) -> float:
    """Run a command; return its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def forget_skopeo_cache() -> None:
    # skopeo remembers which registries hold which blobs; each measurement starts without that.
    SKOPEO_CACHE.unlink(missing_ok=True)


def skopeo_copy(source: str, destination: str) -> float:
    return run("skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", source, destination)


def push_pull_big(target: Target, layout: Path, size: int) -> dict[str, float]:
    forget_skopeo_cache()
    push = skopeo_copy(f"oci:{layout}:big", f"docker://{target.host}/bench/big:v1")
    forget_skopeo_cache()
    with tempfile.TemporaryDirectory(prefix="berth-bench-pull-") as out:
        pull = skopeo_copy(f"docker://{target.host}/bench/big:v1", f"oci:{out}:big")
    return {"push_s": push, "pull_s": pull, "push_mib_s": size / MiB / push, "pull_mib_s": size / MiB / pull}


def small_pushes(target: Target, layout: Path, count: int) -> dict[str, float]:
    forget_skopeo_cache()
    start = time.perf_counter()
    for i in range(count):
        skopeo_copy(f"oci:{layout}:t{i}", f"docker://{target.host}/bench/small:t{i}")
    return {"total_s": time.perf_counter() - start}


WRK_SCRIPT = """
local i = 0
request = function()
  i = (i % {count}) + 1
  return wrk.format("GET", "/v2/bench/small/manifests/t" .. (i - 1), {{
    ["Accept"] = "application/vnd.oci.image.manifest.v1+json"
  }})
end
"""


def _wrk_latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def manifest_rps(target: Target, count: int, seconds: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(count=count))
    try:
        result = subprocess.run(
            ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", script.name, target.url],
            capture_output=True, text=True, check=True,
        )
    finally:
        os.unlink(script.name)
    text = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(socket_errors.group(k)) for k in range(1, 5))
    return {"rps": rps, "p50_ms": _wrk_latency(text, "50"), "p99_ms": _wrk_latency(text, "99"),
            "errors": float(errors)}


def curl_time(url: str, follow: bool = True) -> float:
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}"] + (["-L"] if follow else []) + [url]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(result.stdout)


def blob_get(target: Target, digest: str, size: int, samples: int = 5) -> dict[str, float]:
    """Median of `samples` GETs; for Berth in redirect mode, interleaved with direct SAS GETs of
    the same bytes (the floor), so both see the same storage state."""
    url = f"{target.url}/v2/bench/big/blobs/{digest}"
    sas = httpx.get(url).headers["Location"] if target.name == "berth-redirect" else None
    via, floor = [], []
    for _ in range(samples):
        via.append(curl_time(url))
        if sas is not None:
            floor.append(curl_time(sas, follow=False))
    seconds = statistics.median(via)
    measured = {"get_s": seconds, "get_mib_s": size / MiB / seconds}
    if floor:
        floor_s = statistics.median(floor)
        measured.update({"floor_get_s": floor_s, "floor_get_mib_s": size / MiB / floor_s})
    return measured


def upload_floor(azurite: Azurite, layout: Path, digest: str, size: int) -> dict[str, float]:
    """The Azure SDK uploading the same bytes as blocks, straight to the same storage."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("floor")
    container.create_container()
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    start = time.perf_counter()
    with open(path, "rb") as data:
        container.upload_blob("layer", data, length=path.stat().st_size, max_concurrency=4,
                              overwrite=True)
    seconds = time.perf_counter() - start
    return {"upload_s": seconds, "upload_mib_s": size / MiB / seconds}


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending += [int(c) for c in children.read().split()]
        except FileNotFoundError:
            continue
    return total


def peak_rss(target: Target, layout: Path) -> float:
    """Peak RSS (MB) of the server's process tree while a large image is pushed and pulled."""
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(target.process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        push_pull_big(target, layout, 1)
    finally:
        stop.set()
        sampler.join()
    return peak / 1e6


HOST_FLOOR = "import azure.functions, azurefunctions.extensions.http.fastapi"


def import_time(azurite: Azurite, samples: int = 5) -> dict[str, list[float]]:
    """`import function_app` as the host runs it on Azure: from the deployment package
    (scripts/package.sh, with its bytecode), unpacked where Python may write no bytecode; and,
    alternating with it, the two modules any HTTP-streaming Python function app imports (the
    floor no app goes under)."""
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": ""}
    times: dict[str, list[float]] = {"function_app": [], "host_floor": []}
    with tempfile.TemporaryDirectory() as scratch:
        package = Path(scratch) / "berth.zip"
        subprocess.run(["bash", "scripts/package.sh", str(package)], cwd=PROJECT_ROOT, check=True,
                       capture_output=True, env={**os.environ, "PYTHON": sys.executable})
        app = Path(scratch) / "app"
        zipfile.ZipFile(package).extractall(app)
        for _ in range(samples):
            for name, code in (("function_app", "import function_app"), ("host_floor", HOST_FLOOR)):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], cwd=app, env=env, check=True)
                times[name].append(time.perf_counter() - start)
    return times


def record(results: Results, workload: str, target: str, values: dict[str, float]) -> None:
    for key, value in values.items():
        results[f"{workload}.{key}"].setdefault(target, []).append(value)


def repetition(results: Results, args: argparse.Namespace, images: dict, log: Path) -> None:
    big_layout, big_digest = images["big"]
    for name in ("berth-redirect", "berth-proxy", "cncf"):
        azurite = Azurite().start() if name.startswith("berth") else None
        target = start_berth(azurite, name.split("-")[1], log) if azurite else start_cncf(log)
        try:
            print(f"  {name}: push/pull {args.big_mib} MiB", flush=True)
            record(results, "big", name, push_pull_big(target, big_layout, args.big_mib * MiB))
            record(results, "blob_get", name, blob_get(target, big_digest, args.big_mib * MiB))
            print(f"  {name}: {args.small} small pushes", flush=True)
            record(results, "small", name, small_pushes(target, images["small"], args.small))
            print(f"  {name}: manifest GET by tag, c=32, {args.seconds} s", flush=True)
            record(results, "manifest", name, manifest_rps(target, args.small, args.seconds))
            if azurite is not None and name == "berth-redirect":
                record(results, "floor", "azure-sdk",
                       upload_floor(azurite, big_layout, big_digest, args.big_mib * MiB))
                for module, seconds in import_time(azurite).items():
                    results["import.seconds"].setdefault(module, []).extend(seconds)
        finally:
            target.stop()
            if azurite is not None:
                azurite.stop()
    for name in ("berth-redirect", "berth-proxy"):
        for label, layout in (("rss_big", images["big"][0]), ("rss_huge", images["huge"][0])):
            azurite = Azurite().start()
            target = start_berth(azurite, name.split("-")[1], log)
            try:
                print(f"  {name}: peak RSS, {label}", flush=True)
                results[f"{label}.mb"].setdefault(name, []).append(peak_rss(target, layout))
            finally:
                target.stop()
                azurite.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    return {
        metric: {t: {"median": median(v), "min": min(v), "max": max(v), "n": len(v)} for t, v in by_target.items()}
        for metric, by_target in results.items()
    }


def ratios(s: dict) -> list[tuple[str, float, str, bool]]:
    def m(metric: str, target: str) -> float:
        return s.get(metric, {}).get(target, {}).get("median", float("nan"))

    rows = [
        ("256 MiB pull via Berth (skopeo, redirect) vs CNCF, throughput",
         m("big.pull_s", "cncf") / m("big.pull_s", "berth-redirect"), ">= 1.0", True),
        ("256 MiB pull via Berth (skopeo, proxy) vs CNCF, throughput",
         m("big.pull_s", "cncf") / m("big.pull_s", "berth-proxy"), "(reference)", False),
        ("curl blob GET via Berth (redirect) vs direct SAS GET",
         m("blob_get.floor_get_s", "berth-redirect") / m("blob_get.get_s", "berth-redirect"), ">= 0.9", True),
        ("256 MiB push via Berth vs SDK block-upload floor",
         m("floor.upload_s", "azure-sdk") / m("big.push_s", "berth-redirect"), ">= 0.85", True),
        ("50 small pushes: Berth time / CNCF time",
         m("small.total_s", "berth-redirect") / m("small.total_s", "cncf"), "<= 0.9", True),
        ("manifest GET by tag c=32: Berth rps / CNCF rps",
         m("manifest.rps", "berth-redirect") / m("manifest.rps", "cncf"), ">= 1.4", True),
    ]
    return [(label, value, goal, scored) for label, value, goal, scored in rows]


def meets(value: float, goal: str) -> str:
    if goal.startswith(">="):
        return "yes" if value >= float(goal[2:]) else "no"
    if goal.startswith("<="):
        return "yes" if value <= float(goal[2:]) else "no"
    return ""


def write_report(s: dict, args: argparse.Namespace, started: datetime) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y-%m-%d-%H%M")
    (RESULTS / f"{stamp}.json").write_text(json.dumps({"args": vars(args), "summary": s}, indent=1))
    lines = [
        f"# Benchmark {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"{args.repetitions} repetitions, fresh servers and storage each; layer {args.big_mib} MiB, "
        f"{args.small} small images, wrk {args.seconds} s at c=32. Raw numbers: `{stamp}.json`.",
        "",
        "## Targets",
        "",
        "| ratio (same run) | value | goal | met |",
        "|---|---|---|---|",
    ]
    for label, value, goal, scored in ratios(s):
        lines.append(f"| {label} | {value:.2f} | {goal} | {meets(value, goal) if scored else ''} |")
    rss = s.get("rss_big.mb", {}), s.get("rss_huge.mb", {})
    for name in ("berth-redirect", "berth-proxy"):
        big, huge = rss[0].get(name, {}).get("median", float("nan")), rss[1].get(name, {}).get("median", float("nan"))
        lines.append(f"| peak RSS {name}: {args.big_mib} MiB / {args.huge_mib} MiB layer (MB) | "
                     f"{big:.0f} / {huge:.0f} | < 200, flat | {'yes' if max(big, huge) < 200 else 'no'} |")
    imp = s.get("import.seconds", {}).get("function_app", {}).get("median", float("nan"))
    floor = s.get("import.seconds", {}).get("host_floor", {}).get("median", float("nan"))
    lines.append(f"| `import function_app` from the package (s) | {imp:.2f} | < 1 | {'yes' if imp < 1 else 'no'} |")
    lines.append(f"| of which the host's floor, `{HOST_FLOOR}` (s) | {floor:.2f} | (reference) |  |")
    lines += ["", "## Medians (min–max)", "", "| metric | target | median | min | max |", "|---|---|---|---|---|"]
    for metric in sorted(s):
        for target, v in sorted(s[metric].items()):
            lines.append(f"| {metric} | {target} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} |")
    path = RESULTS / f"{stamp}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run.sh")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--huge-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    started = datetime.now(UTC)
    WORK.mkdir(parents=True, exist_ok=True)
    print("bench: building images (cached in bench/work/)", flush=True)
    images = {
        "big": big_image(WORK, args.big_mib * MiB),
        "huge": big_image(WORK, args.huge_mib * MiB),
        "small": small_images(WORK, args.small),
    }
    results: Results = defaultdict(dict)
    log = WORK / "servers.log"
    for i in range(args.repetitions):
        print(f"bench: repetition {i + 1}/{args.repetitions}", flush=True)
        repetition(results, args, images, log)
    report = write_report(summary(results), args, started)
    print(report.read_text())
    print(f"bench: wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
