"""Where a small push's time goes (issue #15): skopeo pushing small images, one after another,
into Berth (one instance, its disk-backed Azurite, as `python -m registry serve` runs) and into
the CNCF registry, alternating rounds.

Per target and round: the wall time per image, and the CPU each process spent per image (skopeo,
the registry, Azurite), read from /proc and from the children's rusage. For Berth also, from
its request log, each kind of request's count per image and server time (median and total).
The CPU split says what bounds the push on a 2-core machine; the request times say which
requests to work on.

    .venv/bin/python -m bench.push_profile [--images 30] [--rounds 3] [--in-memory]

Writes bench/results/<date>-push-profile[-in-memory].md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode
from azure.storage.blob import BlobBlock, BlobServiceClient

from bench.images import small_images
from bench.run import WORK, forget_skopeo_cache, skopeo_copy
from bench.targets import Target, start_berth, start_cncf
from registry.azurite import PROJECT_ROOT, Azurite

RESULTS = PROJECT_ROOT / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            pending += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def request_kind(line: dict[str, Any]) -> str:
    path = re.sub(r"sha256:[0-9a-f]{64}", "<digest>", line["path"])
    path = re.sub(r"/blobs/uploads/[^/?]+", "/blobs/uploads/<id>", path)
    path = re.sub(r"/manifests/[^/]+$", "/manifests/<tag>", path)
    path = re.sub(r"^/v2/bench/small-r[0-9]+", "", path)
    return f"{line['method']} {path or '/'} {line['status']}"


def push_round(target: Target, layout: Path, images: int, round_: int,
               processes: dict[str, int]) -> dict[str, Any]:
    forget_skopeo_cache()
    before = {name: tree_cpu(pid) for name, pid in processes.items()}
    skopeo_before = children_cpu()
    start = time.perf_counter()
    for i in range(images):
        tag = f"t{round_ * images + i}"  # new content every round
        skopeo_copy(f"oci:{layout}:{tag}", f"docker://{target.host}/bench/small-r{round_}:{tag}")
    wall = time.perf_counter() - start
    cpu = {name: (tree_cpu(pid) - before[name]) / images * 1000 for name, pid in processes.items()}
    cpu["skopeo"] = (children_cpu() - skopeo_before) / images * 1000
    return {"wall_ms_per_image": wall / images * 1000, "cpu_ms_per_image": cpu}


def read_request_log(log: Path, since: int) -> list[dict[str, Any]]:
    lines = []
    with log.open("rb") as file:
        file.seek(since)
        for raw in file:
            text = raw.decode(errors="replace")
            at = text.find('{"requestId"')
            if at >= 0:
                lines.append(json.loads(text[at:]))
    return lines


def summarize_requests(lines: list[dict[str, Any]], images: int) -> list[dict[str, Any]]:
    kinds: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        kinds[request_kind(line)].append(line["ms"])
    rows = [{"request": kind, "per_image": len(times) / images, "median_ms": statistics.median(times),
             "total_ms_per_image": sum(times) / images} for kind, times in kinds.items()]
    return sorted(rows, key=lambda row: -row["total_ms_per_image"])


def azurite_costs(azurite: Azurite, repeat: int = 150) -> dict[str, float]:
    """Azurite's CPU (ms) per storage operation of the kinds a push makes, each repeated
    `repeat` times one after another through the SDK, on a table and container of their own."""
    assert azurite.process is not None
    pid = azurite.process.pid
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table("pushprofile")
    container = BlobServiceClient.from_connection_string(azurite.connection_string).create_container("pushprofile")
    for i in range(repeat):
        table.upsert_entity({"PartitionKey": "p", "RowKey": f"b:{i}", "size": 10, "location": "data/x"})

    def missing(i: int) -> None:
        try:
            table.get_entity("p", f"absent:{i}")
        except ResourceNotFoundError:
            pass

    def transaction(size: int) -> Callable[[int], None]:
        return lambda i: table.submit_transaction(
            [("upsert", {"PartitionKey": "p", "RowKey": f"t{size}:{i}:{j}", "data": "x" * 2000}) for j in range(size)])

    block, sealed = os.urandom(10 * 1024), {"berth": "sealed", "digest": "sha256:" + "0" * 64}
    operations: dict[str, Callable[[int], None]] = {
        "table: point read, row there": lambda i: table.get_entity("p", f"b:{i}"),
        "table: point read, no row": missing,
        "table: insert": lambda i: table.create_entity({"PartitionKey": "p", "RowKey": f"n:{i}", "v": "x" * 100}),
        "table: merge": lambda i: table.update_entity({"PartitionKey": "p", "RowKey": f"b:{i}", "r": i},
                                                      mode=UpdateMode.MERGE),
        "table: transaction of 1": transaction(1),
        "table: transaction of 6": transaction(6),
        "blob: Put Block, 10 KiB": lambda i: container.get_blob_client(f"u{i}").stage_block("YQ==", block),
        "blob: Put Block List, sealing": lambda i: container.get_blob_client(f"u{i}").commit_block_list(
            [BlobBlock("YQ==")], metadata=sealed),
        "blob: Get Blob Properties": lambda i: container.get_blob_client(f"u{i}").get_blob_properties(),
    }
    costs = {}
    for name, operation in operations.items():
        before = tree_cpu(pid)
        for i in range(repeat):
            operation(i)
        costs[name] = (tree_cpu(pid) - before) / repeat * 1000
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-memory", action="store_true",
                        help="Azurite without a data folder (as bench/run.sh runs it)")
    args = parser.parse_args()
    started = datetime.now(UTC)
    layout = small_images(WORK, args.images * args.rounds)
    scratch = Path(tempfile.mkdtemp(prefix="berth-push-profile-"))
    log = scratch / "servers.log"
    log.touch()
    rounds: dict[str, list[dict[str, Any]]] = {"berth": [], "cncf": []}
    requests: list[dict[str, Any]] = []
    azurite = Azurite(None if args.in_memory else scratch / "azurite")
    servers: list[Target] = []
    try:
        azurite.start()
        assert azurite.process is not None
        berth = start_berth(azurite, "redirect", log, log_level="info", BERTH_REQUEST_LOG="all")
        servers.append(berth)
        cncf = start_cncf(log)
        servers.append(cncf)
        for round_ in range(args.rounds):
            for name, target in (("berth", berth), ("cncf", cncf)):
                processes = {"registry": target.process.pid}
                if name == "berth":
                    processes["azurite"] = azurite.process.pid
                offset = log.stat().st_size
                print(f"round {round_ + 1}: {name}", flush=True)
                rounds[name].append(push_round(target, layout, args.images, round_, processes))
                if name == "berth":
                    requests += read_request_log(log, offset)
        for server in servers:  # nothing else on the machine while Azurite is timed alone
            server.stop()
        servers.clear()
        costs = azurite_costs(azurite)
    finally:
        for server in servers:
            server.stop()
        azurite.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"started": started.isoformat(), "images": args.images, "rounds": rounds,
              "requests": summarize_requests(requests, args.images * args.rounds), "azurite_costs": costs}
    stamp = started.strftime("%Y-%m-%d-%H%M")
    RESULTS.mkdir(exist_ok=True)
    suffix = "-in-memory" if args.in_memory else ""
    (RESULTS / f"{stamp}-push-profile{suffix}.json").write_text(json.dumps(report, indent=1))
    path = RESULTS / f"{stamp}-push-profile{suffix}.md"
    path.write_text(render(report, args))
    print(path.read_text())
    return 0


def _median(rows: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for row in rows:
        value: Any = row
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True).stdout.strip()
    berth, cncf = report["rounds"]["berth"], report["rounds"]["cncf"]
    wall_b, wall_c = _median(berth, "wall_ms_per_image"), _median(cncf, "wall_ms_per_image")
    out = [f"# Where a small push's time goes ({report['started'][:16].replace('T', ' ')} UTC, {commit})", "",
           f"`python -m bench.push_profile --images {args.images} --rounds {args.rounds}"
           f"{' --in-memory' if args.in_memory else ''}`: skopeo pushes {args.images} small images "
           "(a 10 KiB base layer shared by all, two 10 KiB layers and a config of their own) "
           f"one after another into Berth (one instance, {'in-memory' if args.in_memory else 'disk-backed'} Azurite) "
           "and into the CNCF registry (local disk), alternating rounds, new images in a new repository each "
           "round. Medians over the rounds, per image.", "",
           "| per image | Berth | CNCF registry |", "|---|---|---|",
           f"| wall time (ms) | {wall_b:.0f} | {wall_c:.0f} |"]
    for name in ("skopeo", "registry", "azurite"):
        b = _median(berth, "cpu_ms_per_image", name)
        c = _median(cncf, "cpu_ms_per_image", name) if name != "azurite" else None
        out.append(f"| CPU, {name} (ms) | {b:.0f} | {'' if c is None else f'{c:.0f}'} |")
    out += ["", f"Berth / CNCF wall time: **{wall_b / wall_c:.2f}**.", "",
            "Berth's requests (request log, server time from the request's arrival to its answer):", "",
            "| request | per image | median (ms) | total per image (ms) |", "|---|---|---|---|"]
    out += [f"| `{row['request']}` | {row['per_image']:.2f} | {row['median_ms']:.1f} | "
            f"{row['total_ms_per_image']:.1f} |" for row in report["requests"]]
    out += ["", "Azurite's CPU per storage operation (each repeated 150 times alone, through the SDK):", "",
            "| operation | Azurite CPU (ms) |", "|---|---|"]
    out += [f"| {name} | {cost:.1f} |" for name, cost in report["azurite_costs"].items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
