"""Small pushes, A/B: this checkout against an older commit, on one Azurite, alternating rounds.

What one round measures, per side: `--images` images of a 10 KiB base layer shared by all, a
10 KiB layer of their own and a config, pushed over plain HTTP into five repositories, one
image after another; the time of the manifest PUTs alone (median) and of the whole round.
`--flow monolithic`: each blob in one POST ?digest=; `--flow session` (what skopeo, docker and
containerd send): HEAD, then POST, PATCH and PUT ?digest= at the Location each answer gives.
Plain HTTP isolates the registry's own work from a client's; bench/run.sh measures what
skopeo sees.

    .venv/bin/python -m bench.push_ab --before c8fa5f7 [--images 30] [--rounds 4] [--flow session]
                                      [--instances 3]

With `--instances N` each side is N instances behind its own round-robin nginx (the test
suite's front), so the requests of one push land on different instances, as on Azure.

Writes bench/results/<date>-push-ab.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.targets import start_berth
from registry.azurite import PROJECT_ROOT, Azurite

RESULTS = PROJECT_ROOT / "bench" / "results"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def push_blob(http: httpx.Client, repository: str, blob: bytes, flow: str) -> None:
    digest = _descriptor("", blob)["digest"]
    if flow == "monolithic":
        response = http.post(f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=blob)
        assert response.status_code == 201, response.text
        return
    if http.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
        return
    response = http.post(f"/v2/{repository}/blobs/uploads/")
    assert response.status_code == 202, response.text
    response = http.patch(response.headers["Location"], content=blob,
                          headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.text
    # As clients do: ?digest= joins the Location's own query (which may carry the upload's state).
    response = http.put(httpx.URL(response.headers["Location"]).copy_merge_params({"digest": digest}))
    assert response.status_code == 201, response.text


def one_round(url: str, images: int, tag: str, flow: str = "monolithic") -> tuple[float, list[float]]:
    base = os.urandom(10 * 1024)
    manifest_times = []
    with httpx.Client(base_url=url, timeout=60) as http:
        start = time.perf_counter()
        for i in range(images):
            repository = f"ab/{tag}-{i % 5}"
            config = json.dumps({"os": "linux", "architecture": "amd64", "n": os.urandom(6).hex()}).encode()
            layer = os.urandom(10 * 1024)
            for blob in (base, layer, config):
                push_blob(http, repository, blob, flow)
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
                               "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", base),
                                          _descriptor("application/vnd.oci.image.layer.v1.tar", layer)]}).encode()
            began = time.perf_counter()
            response = http.put(f"/v2/{repository}/manifests/v{i}", content=body,
                                headers={"Content-Type": OCI_MANIFEST})
            manifest_times.append(time.perf_counter() - began)
            assert response.status_code == 201, response.text
        return time.perf_counter() - start, manifest_times


class _Side:
    """One side of the comparison: an instance, or several behind a round-robin nginx."""

    def __init__(self, berths: list[Any], front: Any = None):
        self.berths, self.front = berths, front
        self.url = front.url if front is not None else berths[0].url

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        for berth in self.berths:
            berth.stop()


def _side(azurite: Azurite, instances: int, work: Path, name: str, root: Path) -> _Side:
    berths = [start_berth(azurite, "redirect", work / f"{name}-{i}.log", root=root) for i in range(instances)]
    if instances == 1:
        return _Side(berths)
    from tests.front import Front, find_nginx  # the suite's round-robin front

    nginx = find_nginx()
    if nginx is None:
        raise SystemExit("bench: --instances needs nginx")
    return _Side(berths, Front(nginx, [berth.host for berth in berths], work / f"nginx-{name}").start())


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="REF", help="the older commit")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--flow", choices=["monolithic", "session"], default="monolithic")
    parser.add_argument("--instances", type=int, default=1, help="instances per side (behind nginx if > 1)")
    args = parser.parse_args()
    before = git("rev-parse", "--verify", f"{args.before}^{{commit}}")
    head = git("rev-parse", "HEAD")
    tree = Path(tempfile.mkdtemp(prefix="berth-before-")) / "tree"
    git("worktree", "add", "--detach", str(tree), before)
    work = Path(tempfile.mkdtemp(prefix="berth-push-ab-"))
    results: dict[str, dict[str, list[float]]] = {"old": {"round": [], "put": []}, "new": {"round": [], "put": []}}
    try:
        with Azurite() as azurite:
            old = _side(azurite, args.instances, work, "old", tree)
            new = _side(azurite, args.instances, work, "new", PROJECT_ROOT)
            try:
                for side, target in (("old", old), ("new", new)):  # warm both
                    one_round(target.url, 5, f"warm-{side}", args.flow)
                for number in range(args.rounds):
                    order = (("old", old), ("new", new)) if number % 2 == 0 else (("new", new), ("old", old))
                    for side, target in order:
                        total, puts = one_round(target.url, args.images, f"{side}{number}", args.flow)
                        results[side]["round"].append(total)
                        results[side]["put"].append(statistics.median(puts) * 1000)
                        print(f"round {number} {side}: {total:.2f} s, manifest PUT median "
                              f"{results[side]['put'][-1]:.1f} ms", flush=True)
            finally:
                old.stop()
                new.stop()
    finally:
        git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree.parent, ignore_errors=True)
    mean = {side: {k: statistics.mean(v) for k, v in values.items()} for side, values in results.items()}
    stamp = datetime.now(UTC)
    lines = [f"# Small pushes A/B: {head[:7]} against {before[:7]} ({stamp:%Y-%m-%d %H:%M} UTC)", "",
             f"`python -m bench.push_ab --before {args.before} --images {args.images} --rounds {args.rounds} "
             f"--flow {args.flow} --instances {args.instances}`: both on one in-memory Azurite, alternating "
             "rounds; plain HTTP.", "",
             "| | old | new | change |", "|---|---|---|---|"]
    for key, label in (("round", f"{args.images} pushes (s)"), ("put", "manifest PUT, median per round (ms)")):
        old_values = ", ".join(f"{v:.2f}" for v in results["old"][key])
        new_values = ", ".join(f"{v:.2f}" for v in results["new"][key])
        change = mean["new"][key] / mean["old"][key] - 1
        lines.append(f"| {label} | {old_values} | {new_values} | {change:+.0%} (mean) |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = RESULTS / f"{stamp:%Y-%m-%d-%H%M}-push-ab.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"bench: wrote {report}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
