"""How fast the web page renders: server time of the pages of a repository with many tags.

One Berth instance on an in-memory Azurite; one repository gets `--tags` tags (one image, its
manifest PUT under each tag), other repositories fill the catalog to `--repositories`. Then each
page is fetched `--requests` times, one at a time, and the server's time to the answer's head is
read from Berth's request log (`ms`), so the client's own time is left out:

- the repository page (the first 50 tags of `--tags`, each with its manifest's type and size),
- its last page (`?last=`), the repositories page, a prefix search, and the manifest page.

    .venv/bin/python -m bench.ui_render [--tags 1000] [--repositories 2000] [--requests 30]

Writes bench/results/<date>-ui-render.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.push_ab import RESULTS, git
from bench.targets import start_berth
from registry.azurite import Azurite, stop_process

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def _push_image(http: httpx.Client, repository: str) -> bytes:
    layer = os.urandom(1024)
    config = json.dumps({"os": "linux", "architecture": "amd64", "config": {"Labels": {"bench": "ui"}}}).encode()
    for blob in (layer, config):
        digest = _descriptor("", blob)["digest"]
        http.post(f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=blob).raise_for_status()
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
                       "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)]}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui_render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--repositories", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-bench-ui-"))
    log = work / "berth.log"
    results: dict[str, list[float]] = {}
    with Azurite() as azurite:
        berth = start_berth(azurite, "redirect", log, log_level="info", BERTH_REQUEST_LOG="all",
                            BERTH_EVENTS_WORKER="false")
        try:
            with httpx.Client(base_url=berth.url, timeout=120) as http:
                manifest = _push_image(http, "bench/many-tags")
                headers = {"Content-Type": OCI_MANIFEST}

                def tag(i: int) -> None:
                    http.put(f"/v2/bench/many-tags/manifests/t{i:05d}", content=manifest,
                             headers=headers).raise_for_status()

                def repository(i: int) -> None:
                    body = _push_image(http, f"bench/repo-{i:05d}")
                    http.put(f"/v2/bench/repo-{i:05d}/manifests/v1", content=body, headers=headers).raise_for_status()

                with ThreadPoolExecutor(2) as pool:  # tags of one manifest conflict: few at a time
                    list(pool.map(tag, range(args.tags)))
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(repository, range(args.repositories)))
                digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
                pages = {
                    f"repository page ({args.tags} tags, first 50)": "/ui/repo/bench/many-tags",
                    "repository page, last page": f"/ui/repo/bench/many-tags?last=t{args.tags - 10:05d}",
                    f"repositories page ({args.repositories + 1} repositories)": "/ui/",
                    "prefix search (bench/repo-01)": "/ui/?q=bench/repo-01",
                    "manifest page": f"/ui/repo/bench/many-tags@{digest}",
                }
                for name, path in pages.items():
                    http.get(path).raise_for_status()  # warm
                    mark = log.stat().st_size
                    for _ in range(args.requests):
                        assert http.get(path).status_code == 200
                    with log.open() as lines:
                        lines.seek(mark)
                        results[name] = [json.loads(line.split(" berth.request: ", 1)[1])["ms"]
                                         for line in lines if " berth.request: " in line and "/ui/" in line]
        finally:
            stop_process(berth.process)
    stamp = datetime.now(UTC)
    out = RESULTS / f"{stamp:%Y-%m-%d-%H%M}-ui-render.md"
    lines = [f"# Web page render time ({stamp:%Y-%m-%d %H:%M} UTC, {git('rev-parse', '--short', 'HEAD')})", "",
             f"`python -m bench.ui_render --tags {args.tags} --repositories {args.repositories} "
             f"--requests {args.requests}`: one instance, in-memory Azurite, auth off; server time to the "
             "answer's head from Berth's request log, one request at a time.", "",
             "| page | p50 ms | p90 ms | max ms |", "|---|---|---|---|"]
    for name, times in results.items():
        ordered = sorted(times)
        lines.append(f"| {name} | {statistics.median(ordered):.1f} | {ordered[int(0.9 * (len(ordered) - 1))]:.1f} "
                     f"| {ordered[-1]:.1f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
