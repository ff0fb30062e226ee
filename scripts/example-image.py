#!/usr/bin/env python3
"""Writes a small OCI image (one layer holding /hello.txt, linux/amd64) as an OCI layout, for
README's worked example: `python3 scripts/example-image.py ./layout` then
`skopeo copy oci:./layout:1.0 docker://127.0.0.1:5000/team/app:1.0`. Standard library only."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _store(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def write_image(layout: Path, tag: str = "1.0", text: str = "hello from Berth\n") -> str:
    """Writes the image and returns its manifest digest."""
    content = text.encode()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as archive:
        entry = tarfile.TarInfo("hello.txt")
        entry.size, entry.mode, entry.mtime = len(content), 0o644, 0
        archive.addfile(entry, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello.txt"], "Labels": {"org.opencontainers.image.title": "berth-example"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes.getvalue()).hexdigest()}"]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _store(layout, config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _store(layout, layer),
                    "size": len(layer)}],
    }).encode()
    digest = _store(layout, manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": MANIFEST, "digest": digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return digest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/example-image.py <layout directory>")
    print(write_image(Path(sys.argv[1])))
