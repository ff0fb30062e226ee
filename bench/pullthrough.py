"""The pull-through cache against pulling straight from upstream, with skopeo, on this machine.

Upstream is the CNCF registry on local disk, holding a one-layer image of `--size-mib` random
bytes. Each repetition makes a fresh cache rule (so the first pull is cold) and times:
- direct: skopeo pulls from upstream itself;
- cold: skopeo pulls through Berth's cache, which fetches from upstream and stores first;
- warm: the same pull again, served by Berth;
- pushed: the same image pushed to Berth, then pulled (what the warm pull should match).
Berth runs in redirect mode on an in-memory Azurite. Ratios are of medians.

    .venv/bin/python -m bench.pullthrough [--size-mib 256] [--repetitions 3]

Writes bench/results/<date>-pullthrough.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.images import MiB, big_image
from bench.run import RESULTS, WORK, forget_skopeo_cache, skopeo_copy
from bench.targets import start_berth, start_cncf
from registry.azurite import PROJECT_ROOT, Azurite


def pull(host: str, repository: str) -> float:
    forget_skopeo_cache()
    with tempfile.TemporaryDirectory(prefix="berth-bench-pt-") as out:
        return skopeo_copy(f"docker://{host}/{repository}:v1", f"oci:{out}:big")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pullthrough", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    started = datetime.now(UTC)
    layout, _ = big_image(WORK, args.size_mib * MiB)
    log = Path(tempfile.mkdtemp(prefix="berth-bench-pt-log-")) / "servers.log"
    os.environ["BERTH_UPSTREAM_PRIVATE_HOSTS"] = "127.0.0.1"  # the upstream lives on loopback
    times: dict[str, list[float]] = {"direct": [], "cold": [], "warm": [], "pushed": []}
    upstream = start_cncf(log)
    try:
        forget_skopeo_cache()
        skopeo_copy(f"oci:{layout}:big", f"docker://{upstream.host}/bench/big:v1")
        with Azurite() as azurite:
            berth = start_berth(azurite, "redirect", log)
            env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string}
            try:
                forget_skopeo_cache()
                skopeo_copy(f"oci:{layout}:big", f"docker://{berth.host}/pushed/big:v1")
                for number in range(args.repetitions):
                    prefix = f"cache{number}"
                    subprocess.run([sys.executable, "-m", "registry", "cache", "create", f"rule-{number}", "-s",
                                    f"http://{upstream.host}/bench/*", "-t", f"{prefix}/*"], cwd=PROJECT_ROOT,
                                   env=env, check=True, capture_output=True)
                    times["direct"].append(pull(upstream.host, "bench/big"))
                    times["cold"].append(pull(berth.host, f"{prefix}/big"))
                    times["warm"].append(pull(berth.host, f"{prefix}/big"))
                    times["pushed"].append(pull(berth.host, "pushed/big"))
                    print(f"repetition {number}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                          flush=True)
            finally:
                berth.stop()
    finally:
        upstream.stop()
    median = {key: statistics.median(values) for key, values in times.items()}
    lines = [f"# Pull-through cache, {args.size_mib} MiB layer, skopeo ({started:%Y-%m-%d %H:%M} UTC)", "",
             f"`python -m bench.pullthrough --size-mib {args.size_mib} --repetitions {args.repetitions}`: upstream "
             "is the CNCF registry on local disk; Berth in redirect mode on an in-memory Azurite; each "
             "repetition a fresh cache rule; skopeo's blob-info cache cleared before every pull.", "",
             "| pull | seconds (each repetition) | median | MiB/s |", "|---|---|---|---|"]
    for key, label in (("direct", "straight from upstream"), ("cold", "through the cache, first pull"),
                       ("warm", "through the cache, again"), ("pushed", "an image pushed to Berth")):
        lines.append(f"| {label} | {', '.join(f'{v:.2f}' for v in times[key])} | {median[key]:.2f} | "
                     f"{args.size_mib / median[key]:.0f} |")
    lines += ["", f"- cold pull-through / direct pull: **{median['cold'] / median['direct']:.2f}x** the time",
              f"- warm pull-through / pull of a pushed image: **{median['warm'] / median['pushed']:.2f}x** the time",
              "", "A cold pull gets the layer while it streams from upstream into Blob Storage, so it "
              "goes at the pace of the slower of the two (here Azurite's writes); the layer's last "
              "chunk is held until the stored copy is verified."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = RESULTS / f"{started:%Y-%m-%d-%H%M}-pullthrough.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"bench: wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
