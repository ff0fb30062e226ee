"""Storage transactions per registry operation, counted on the storage side.

Storage is billed per transaction, so on a serverless registry this is most of the running cost
beside executions. A counting reverse proxy sits between one Berth instance and Azurite (one per
service: blob, table, queue) and classifies every request storage receives. Each operation runs
`--repeat` times with fresh content, after a warm-up, and the counts are divided by the repeats:

- push of a small image, as skopeo and docker push it: per blob a HEAD (404), POST, PATCH and
  PUT ?digest=, then the manifest PUT by tag. Three blobs: a base layer the first image
  uploaded (HEAD 200, nothing more), a layer of its own and a config;
- push of a 256 MiB layer (POST, one streamed PATCH, PUT ?digest=);
- pull by tag (the manifest GET by tag), pull by digest, blob HEAD, blob GET (redirect: a 307);
- a whole pull of that small image by tag: manifest, config and both layers.

    .venv/bin/python -m bench.transactions [--repeat 5] [--big-mib 256]

Writes bench/results/<date>-transactions.md (and .json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from bench.push_ab import RESULTS, git
from bench.targets import start_berth
from registry.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, free_port, stop_process

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
_ENTITY = re.compile(r"\(PartitionKey='.*',RowKey='.*'\)$")


def classify(service: str, method: str, path: str, query: dict[str, str]) -> str:
    """The storage operation a request is, in the words of Azure's pricing pages."""
    if service == "blob":
        comp = query.get("comp", "")
        if comp == "block":
            return "blob: Put Block"
        if comp == "blocklist":
            return "blob: Put Block List" if method == "PUT" else "blob: Get Block List"
        if comp == "userdelegationkey":
            return "blob: Get User Delegation Key"
        if comp == "list":
            return "blob: List Blobs"
        if comp:
            return f"blob: {method} ?comp={comp}"
        names = {"HEAD": "Get Blob Properties", "GET": "Get Blob", "PUT": "Put Blob", "DELETE": "Delete Blob"}
        return f"blob: {names.get(method, method)}"
    if service == "table":
        if path.endswith("$batch"):
            return "table: Entity Group Transaction"
        if method == "GET":
            return "table: Query Entity (point)" if _ENTITY.search(path) else "table: Query Entities"
        names = {"POST": "Insert Entity", "PUT": "Update/Insert Entity", "MERGE": "Merge Entity",
                 "PATCH": "Merge Entity", "DELETE": "Delete Entity"}
        return f"table: {names.get(method, method)}"
    return f"queue: {method} {path.rsplit('/', 1)[-1]}"


class CountingProxy:
    """A reverse proxy in front of one Azurite service that counts what passes, on its own loop."""

    def __init__(self, service: str, target_port: int):
        self.service = service
        self.target = f"http://127.0.0.1:{target_port}"
        self.port = free_port()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        session = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request) -> web.StreamResponse:
            with self._lock:
                self.counts[classify(self.service, request.method, request.path, dict(request.query))] += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "transfer-encoding")}
            # Read whole (a Put Block is at most a block): a streamed body would go out chunked,
            # without the Content-Length the request's shared-key signature covers.
            body = await request.read() if request.can_read_body else None
            async with session.request(request.method, self.target + request.path_qs, headers=headers, data=body,
                                       skip_auto_headers=("Content-Type",), allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in ("transfer-encoding", "connection")})
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response

        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await asyncio.Event().wait()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


def push_blob(http: httpx.Client, repository: str, data: bytes) -> None:
    """As skopeo and docker do: HEAD, then POST, PATCH, PUT unless the registry has it."""
    digest = _digest(data)
    if http.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
        return
    location = http.post(f"/v2/{repository}/blobs/uploads/").headers["Location"]
    octets = {"Content-Type": "application/octet-stream"}
    location = http.patch(location, content=data, headers=octets).headers["Location"]
    answer = http.put(httpx.URL(location).copy_merge_params({"digest": digest}))
    assert answer.status_code == 201, answer.text


def push_small(http: httpx.Client, repository: str, tag: str, base: bytes) -> bytes:
    layer, config = os.urandom(10 * 1024), json.dumps({"os": "linux", "architecture": "amd64",
                                                        "n": os.urandom(6).hex()}).encode()
    for blob in (base, layer, config):
        push_blob(http, repository, blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
                           "layers": [_descriptor(LAYER, base), _descriptor(LAYER, layer)]}).encode()
    answer = http.put(f"/v2/{repository}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert answer.status_code == 201, answer.text
    return manifest


def _chunks(size: int, seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (1 << 15)  # 1 MiB, cheap and not all zeros
    for i in range(size // len(block)):
        yield i.to_bytes(8, "big") + block[8:]


def push_big(http: httpx.Client, repository: str, mib: int, seed: bytes) -> None:
    hasher = hashlib.sha256()
    for chunk in _chunks(mib << 20, seed):
        hasher.update(chunk)
    location = http.post(f"/v2/{repository}/blobs/uploads/").headers["Location"]
    location = http.patch(location, content=_chunks(mib << 20, seed),
                          headers={"Content-Type": "application/octet-stream"}).headers["Location"]
    answer = http.put(httpx.URL(location).copy_merge_params({"digest": "sha256:" + hasher.hexdigest()}))
    assert answer.status_code == 201, answer.text


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transactions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-bench-tx-"))
    rows: dict[str, dict[str, float]] = {}
    with Azurite() as azurite:
        proxies = {service: CountingProxy(service, port) for service, port in
                   (("blob", azurite.blob_port), ("table", azurite.table_port), ("queue", azurite.queue_port))}
        counted = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                   + "".join(f"{name.capitalize()}Endpoint=http://127.0.0.1:{proxy.port}/{ACCOUNT};"
                             for name, proxy in proxies.items()))
        berth = start_berth(azurite, "redirect", work / "berth.log", BERTH_STORAGE_CONNECTION_STRING=counted,
                            BERTH_EVENTS_WORKER="false", BERTH_REQUEST_LOG="off")

        def measure(name: str, operation: Any) -> None:
            for proxy in proxies.values():
                proxy.take()
            began = time.perf_counter()
            for i in range(args.repeat):
                operation(i)
            elapsed = time.perf_counter() - began
            total: Counter[str] = Counter()
            for proxy in proxies.values():
                total.update(proxy.take())
            rows[name] = {kind: count / args.repeat for kind, count in sorted(total.items())}
            rows[name]["(all)"] = sum(total.values()) / args.repeat
            print(f"{name}: {rows[name]['(all)']:.1f} storage requests ({elapsed / args.repeat * 1000:.0f} ms each)")

        try:
            with httpx.Client(base_url=berth.url, timeout=300) as http:
                base = os.urandom(10 * 1024)
                manifests = [push_small(http, "tx/warm", f"w{i}", base) for i in range(3)]  # warm-up
                measure("push small image (base layer present)",
                        lambda i: manifests.append(push_small(http, "tx/app", f"v{i}", base)))
                digest = _digest(manifests[-1])
                layer_digest = json.loads(manifests[-1])["layers"][1]["digest"]
                accept = {"Accept": OCI_MANIFEST}
                measure("manifest GET by tag",
                        lambda i: http.get("/v2/tx/app/manifests/v0", headers=accept).raise_for_status())
                measure("manifest HEAD by tag",
                        lambda i: http.head("/v2/tx/app/manifests/v0", headers=accept).raise_for_status())
                measure("manifest GET by digest",
                        lambda i: http.get(f"/v2/tx/app/manifests/{digest}", headers=accept).raise_for_status())
                measure("blob HEAD", lambda i: http.head(f"/v2/tx/app/blobs/{layer_digest}").raise_for_status())
                measure("blob GET (307 to storage)",
                        lambda i: http.get(f"/v2/tx/app/blobs/{layer_digest}").status_code == 307 or 1 / 0)

                def pull(i: int) -> None:
                    manifest = http.get("/v2/tx/app/manifests/v0", headers={"Accept": OCI_MANIFEST}).json()
                    for blob in [manifest["config"], *manifest["layers"]]:
                        assert http.get(f"/v2/tx/app/blobs/{blob['digest']}").status_code == 307

                measure("pull small image by tag (manifest + 3 blob GETs, not counting storage serving the 307s)", pull)
                measure(f"push {args.big_mib} MiB layer",
                        lambda i: push_big(http, "tx/big", args.big_mib, os.urandom(16)))
        finally:
            stop_process(berth.process)
    stamp = datetime.now(UTC)
    out = RESULTS / f"{stamp:%Y-%m-%d-%H%M}-transactions"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    commit = git("rev-parse", "--short", "HEAD")
    lines = [f"# Storage transactions per operation ({stamp:%Y-%m-%d %H:%M} UTC, {commit})",
             "", f"`python -m bench.transactions --repeat {args.repeat} --big-mib {args.big_mib}`: one instance, "
             "in-memory Azurite behind a counting proxy; warm caches; per operation, the mean over the repeats.", ""]
    for name, counts in rows.items():
        lines += [f"## {name}: {counts['(all)']:.1f}", "",
                  "| storage operation | per registry operation |", "|---|---|"]
        lines += [f"| {kind} | {value:g} |" for kind, value in counts.items() if kind != "(all)"]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
