"""OCI image layouts for the benchmark: pre-gzipped random layers, built once and reused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MiB = 1024 * 1024


class _RandomReader(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left, 4 * MiB)
        buffer[:n] = os.urandom(n)
        self.left -= n
        return n


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _add_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = _blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _random_layer(layout: Path, size: int, name: str) -> tuple[dict, str]:
    """A tar.gz of `size` random bytes, streamed to disk (never whole in memory)."""
    tmp = layout / "layer.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    raw = hashlib.sha256()
    with open(tmp, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz:
        class Tee:
            def write(self, data: bytes) -> int:
                raw.update(data)
                return gz.write(data)

        with tarfile.open(fileobj=Tee(), mode="w|") as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(_RandomReader(size), 4 * MiB))
    digest = hashlib.sha256()
    with open(tmp, "rb") as data:
        for chunk in iter(lambda: data.read(4 * MiB), b""):
            digest.update(chunk)
    final = _blob_path(layout, "sha256:" + digest.hexdigest())
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
    descriptor = {"mediaType": LAYER, "digest": "sha256:" + digest.hexdigest(), "size": final.stat().st_size}
    return descriptor, "sha256:" + raw.hexdigest()


def _finish(layout: Path, layers: list[dict], diff_ids: list[str], ref: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_add_blob(layout, config)},
        "layers": layers,
    }).encode()
    descriptor = {"mediaType": OCI_MANIFEST, **_add_blob(layout, manifest),
                  "annotations": {"org.opencontainers.image.ref.name": ref}}
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"].append(descriptor)
    index_path.write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return descriptor["digest"]


def big_image(work: Path, size: int) -> tuple[Path, str]:
    """A one-layer image whose layer holds `size` random bytes; returns (layout, layer digest)."""
    layout = work / f"big-{size // MiB}m"
    marker = layout / "layer-digest"
    if marker.exists():
        return layout, marker.read_text()
    layer, diff_id = _random_layer(layout, size, "data.bin")
    _finish(layout, [layer], [diff_id], "big")
    marker.write_text(layer["digest"])
    return layout, layer["digest"]


def small_images(work: Path, count: int) -> Path:
    """`count` images of 3 layers of 10 KiB: one base layer they all share, two of their own."""
    layout = work / f"small-{count}"
    if (layout / "index.json").exists():
        return layout
    base = os.urandom(10 * 1024)
    base_layer = {"mediaType": LAYER, **_add_blob(layout, gzip.compress(base, mtime=0))}
    for i in range(count):
        own = [gzip.compress(os.urandom(10 * 1024), mtime=0) for _ in range(2)]
        layers = [base_layer] + [{"mediaType": LAYER, **_add_blob(layout, blob)} for blob in own]
        diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(_blob_path(layout, d["digest"]).read_bytes()))
                    .hexdigest() for d in layers]
        _finish(layout, layers, diff_ids, f"t{i}")
    return layout
