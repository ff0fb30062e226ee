"""What bounds a large push (issue #15): skopeo pushing one image with a large random layer into
Berth (one instance on Azurite) and into the CNCF registry (local disk), fresh servers and
storage every round, alternating; and the direct SDK block upload of the same layer into Azurite
(the storage floor). Per round: wall time, throughput, and the CPU seconds of each process
(skopeo, the registry, Azurite, the uploading SDK), so the report says whether the machine's
cores were the limit and whose work filled them.

    .venv/bin/python -m bench.big_push_profile [--size-mib 256] [--rounds 3] [--in-memory]

Writes bench/results/<date>-big-push-profile[-in-memory].md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from bench.images import MiB, big_image
from bench.push_profile import RESULTS, children_cpu, tree_cpu
from bench.run import WORK, forget_skopeo_cache, skopeo_copy
from bench.targets import start_berth, start_cncf
from registry.azurite import PROJECT_ROOT, Azurite


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(name: str, layout: Path, digest: str, in_memory: bool, log: Path, scratch: Path) -> dict[str, Any]:
    azurite = None if name == "cncf" else Azurite(None if in_memory else scratch / f"azurite-{time.time_ns()}")
    target = None
    try:
        if azurite is not None:
            azurite.start()
            assert azurite.process is not None
        processes = {} if azurite is None else {"azurite": azurite.process.pid}  # type: ignore[union-attr]
        if name == "berth":
            assert azurite is not None
            target = start_berth(azurite, "redirect", log)
        elif name == "cncf":
            target = start_cncf(log)
        if target is not None:
            processes["registry"] = target.process.pid
        forget_skopeo_cache()
        before = {key: tree_cpu(pid) for key, pid in processes.items()}
        tools_before, own_before = children_cpu(), self_cpu()
        start = time.perf_counter()
        if target is not None:
            skopeo_copy(f"oci:{layout}:big", f"docker://{target.host}/bench/big:v1")
        else:  # the floor: the SDK's parallel block upload, straight into Azurite
            assert azurite is not None
            blob = BlobServiceClient.from_connection_string(azurite.connection_string, max_block_size=4 * MiB,
                                                            max_single_put_size=4 * MiB)
            container = blob.create_container("floor")
            with open(layout / "blobs" / "sha256" / digest.split(":")[1], "rb") as data:
                container.upload_blob("layer", data, max_concurrency=4)
        wall = time.perf_counter() - start
        cpu = {key: tree_cpu(pid) - before[key] for key, pid in processes.items()}
        if target is not None:
            cpu["skopeo"] = children_cpu() - tools_before
        else:
            cpu["sdk"] = self_cpu() - own_before
        return {"wall_s": wall, "cpu_s": cpu}
    finally:
        if target is not None:
            target.stop()
        if azurite is not None:
            azurite.stop()


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True).stdout.strip()
    cores = os.cpu_count() or 1
    out = [f"# What bounds a {args.size_mib} MiB push ({report['started'][:16].replace('T', ' ')} UTC, {commit})", "",
           f"`python -m bench.big_push_profile --size-mib {args.size_mib} --rounds {args.rounds}"
           f"{' --in-memory' if args.in_memory else ''}`: one image with a {args.size_mib} MiB random layer, "
           f"pushed by skopeo into Berth (one instance, {'in-memory' if args.in_memory else 'disk-backed'} "
           "Azurite) and into the CNCF registry (local disk), and uploaded by the SDK straight into Azurite "
           "(4 MiB blocks, 4 in flight: the floor). Fresh servers and storage every round, alternating; medians "
           f"over the rounds. Cores: {cores}; *busy* is the CPU seconds of all processes over the cores' seconds.",
           "", "| | MiB/s | wall (s) | CPU skopeo / SDK (s) | CPU registry (s) | CPU Azurite (s) | busy |",
           "|---|---|---|---|---|---|---|"]
    for name, label in (("berth", "Berth"), ("cncf", "CNCF registry"), ("floor", "SDK into Azurite")):
        rounds = report["rounds"][name]
        wall = statistics.median(r["wall_s"] for r in rounds)

        def cpu(key: str, rounds: list[dict[str, Any]] = rounds) -> str:
            values = [r["cpu_s"][key] for r in rounds if key in r["cpu_s"]]
            return f"{statistics.median(values):.2f}" if values else ""

        busy = statistics.median(sum(r["cpu_s"].values()) / (cores * r["wall_s"]) for r in rounds)
        out.append(f"| {label} | {args.size_mib / wall:.0f} | {wall:.2f} | {cpu('skopeo') or cpu('sdk')} | "
                   f"{cpu('registry')} | {cpu('azurite')} | {busy:.0%} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-memory", action="store_true", help="Azurite without a data folder")
    args = parser.parse_args()
    started = datetime.now(UTC)
    layout, digest = big_image(WORK, args.size_mib * MiB)
    scratch = Path(tempfile.mkdtemp(prefix="berth-big-push-profile-"))
    log = scratch / "servers.log"
    rounds: dict[str, list[dict[str, Any]]] = {"berth": [], "cncf": [], "floor": []}
    try:
        for round_ in range(args.rounds):
            for name in rounds:
                print(f"round {round_ + 1}: {name}", flush=True)
                rounds[name].append(one_round(name, layout, digest, args.in_memory, log, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"started": started.isoformat(), "size_mib": args.size_mib, "rounds": rounds}
    stamp = started.strftime("%Y-%m-%d-%H%M")
    suffix = "-in-memory" if args.in_memory else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}-big-push-profile{suffix}.json").write_text(json.dumps(report, indent=1))
    path = RESULTS / f"{stamp}-big-push-profile{suffix}.md"
    path.write_text(render(report, args))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
