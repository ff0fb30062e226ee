"""OCI image manifests and indexes rewritten as Docker schema 2 (no I/O).

For consumers that take only Docker media types. A rendition says the same thing about the
same blobs (config and layers keep their digests); what Docker schema 2 cannot say
(annotations, artifactType, subject) is dropped, and what it cannot carry (zstd layers,
artifacts, nested indexes) makes the source not convertible (None).

The output is deterministic, so every instance derives the same bytes and digest from one
source: Docker's layout (3-space indent as Go's json.MarshalIndent gives it, Docker's key
order), ASCII only (other characters escaped). Never change it: a rendition's digest would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# The Docker type of each OCI manifest type that has one.
DOCKER_COUNTERPART = {OCI_MANIFEST: DOCKER_MANIFEST, OCI_INDEX: DOCKER_MANIFEST_LIST}

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar": "application/vnd.docker.image.rootfs.diff.tar",
}
DOCKER_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
# Docker's platform fields, in Docker's order; others are dropped.
PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant", "features")


@dataclass(frozen=True)
class Child:
    """An index entry that is a manifest of the repository: what the rendition needs of it."""

    media_type: str
    digest: str
    platform_image: bool  # has a real platform: leaving it out would change what users pull


def serialize(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=3).encode()


def _load(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _descriptor(value: Any, media_type: str) -> dict[str, Any]:
    """Docker's descriptor: mediaType, size, digest, and urls when there are any."""
    descriptor = {"mediaType": media_type, "size": value["size"], "digest": value["digest"]}
    if value.get("urls"):
        descriptor["urls"] = value["urls"]
    return descriptor


def docker_manifest(body: bytes) -> bytes | None:
    """The Docker schema 2 rendition of an OCI image manifest, None if it has none."""
    document = _load(body)
    if document is None or document.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        return None
    config = document.get("config")
    layers = document.get("layers", [])
    if not isinstance(config, dict) or config.get("mediaType") != OCI_CONFIG or not isinstance(layers, list):
        return None
    if not all(isinstance(layer, dict) and layer.get("mediaType") in LAYER_TYPES for layer in layers):
        return None
    return serialize({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": _descriptor(config, DOCKER_CONFIG),
        "layers": [_descriptor(layer, LAYER_TYPES[layer["mediaType"]]) for layer in layers],
    })


def _platform_image(entry: dict[str, Any]) -> bool:
    """False for entries that are not an image to run (BuildKit attestations: os `unknown`)."""
    platform = entry.get("platform")
    annotations = entry.get("annotations") or {}
    if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return False
    return isinstance(platform, dict) and platform.get("os") not in (None, "", "unknown")


def index_children(body: bytes) -> list[Child] | None:
    """The entries of an OCI index, None if it is not one."""
    document = _load(body)
    if document is None or document.get("mediaType", OCI_INDEX) != OCI_INDEX:
        return None
    entries = document.get("manifests")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    return [Child(e.get("mediaType", ""), e.get("digest", ""), _platform_image(e)) for e in entries]


def docker_manifest_list(body: bytes, renditions: Mapping[str, Mapping[str, Any] | None]) -> bytes | None:
    """The Docker manifest list rendition of an OCI index, None if it has none.

    `renditions` maps the digest of each OCI image child to the descriptor (mediaType, size,
    digest) of its Docker rendition, or None when it has none. Docker-typed children are kept
    as they are; children with no rendition are left out unless they are platform images, in
    which case the index has no rendition.
    """
    children = index_children(body)
    document = _load(body)
    if children is None or document is None:
        return None
    manifests = []
    for child, entry in zip(children, document["manifests"], strict=True):
        if child.media_type in DOCKER_TYPES:
            descriptor: Mapping[str, Any] | None = entry
        else:
            descriptor = renditions.get(child.digest)
        if descriptor is None:
            if child.platform_image:
                return None
            continue
        converted = _descriptor(descriptor, descriptor["mediaType"])
        platform = entry.get("platform")
        if isinstance(platform, dict):
            converted["platform"] = {key: platform[key] for key in PLATFORM_KEYS if key in platform}
        manifests.append(converted)
    if not manifests:
        return None
    return serialize({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": manifests})

