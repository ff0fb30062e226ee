"""Builds OCI image layouts on disk (what skopeo pushes from and pulls into)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _write_blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256"
    path.mkdir(parents=True, exist_ok=True)
    (path / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def _image(layout: Path, arch: str, layer_sizes: list[int]) -> dict:
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        files = {f"data/{arch}-{i}.bin": os.urandom(size)}
        blob = _layer(files)
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_write_blob(layout, blob)})
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_write_blob(layout, config)},
        "layers": layers,
    }).encode()
    return {"mediaType": OCI_MANIFEST, **_write_blob(layout, manifest),
            "platform": {"architecture": arch, "os": "linux"}}


def _finish(layout: Path, descriptor: dict, ref: str) -> str:
    entry = {**descriptor, "annotations": {"org.opencontainers.image.ref.name": ref}}
    entry.pop("platform", None)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return descriptor["digest"]


def image_layout(layout: Path, ref: str = "latest", layer_sizes: list[int] | None = None) -> str:
    """A single-platform image; returns its manifest digest."""
    return _finish(layout, _image(layout, "amd64", layer_sizes or [2048, 70_000]), ref)


def multiarch_layout(layout: Path, ref: str = "latest") -> str:
    """An index over linux/amd64 and linux/arm64 images; returns the index digest."""
    children = [_image(layout, arch, [4096]) for arch in ("amd64", "arm64")]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    return _finish(layout, {"mediaType": OCI_INDEX, **_write_blob(layout, index)}, ref)


def manifest_digest(layout: Path, ref: str = "latest") -> str:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return entry["digest"]
    raise KeyError(ref)


def read_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
