"""Manifest media types and validation of manifest bodies (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import MANIFEST_INVALID, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_MEDIA_TYPES = IMAGE_MANIFESTS + INDEXES

# Layers that live elsewhere by design; a registry need not hold their bytes.
NON_DISTRIBUTABLE = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)

SCHEMA1_MESSAGE = (
    "Docker image manifest schema 1 is deprecated and not accepted; push the image as "
    "Docker schema 2 or OCI (for example: skopeo copy --format v2s2 ...)"
)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None


@dataclass(frozen=True)
class Manifest:
    """What the registry needs to know about a validated manifest."""

    media_type: str
    config: Descriptor | None
    blobs: list[Descriptor] = field(default_factory=list)  # config + layers that must exist
    children: list[Descriptor] = field(default_factory=list)  # index entries that must exist
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def _invalid(message: str) -> RegistryError:
    return RegistryError(MANIFEST_INVALID, message)


def base_media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _string_map(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where} must be a map of strings")
    return value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    size = value.get("size")
    digest = value.get("digest")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is required")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest is required")
    try:
        parsed = parse_digest(digest)
    except RegistryError as error:
        raise _invalid(f"{where}.digest: {error.message}") from None
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid(f"{where}.artifactType must be a string")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}.platform must be an object")
    return Descriptor(
        media_type,
        parsed,
        size,
        artifact_type,
        _string_map(value.get("annotations"), f"{where}.annotations"),
        platform,
    )


def _descriptor_list(value: Any, where: str) -> list[Descriptor]:
    if not isinstance(value, list):
        raise _invalid(f"{where} must be a list")
    return [_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value)]


def parse_manifest(body: bytes, content_type: str | None) -> Manifest:
    """Validate a pushed manifest and say what it references."""
    declared = base_media_type(content_type)
    if declared in DOCKER_SCHEMA1:
        raise _invalid(SCHEMA1_MESSAGE)
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise _invalid(f"manifest is not valid JSON: {error}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")
    if document.get("schemaVersion") == 1 or "fsLayers" in document:
        raise _invalid(SCHEMA1_MESSAGE)
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    in_body = document.get("mediaType")
    if in_body is not None and not isinstance(in_body, str):
        raise _invalid("mediaType must be a string")
    if in_body and declared in MANIFEST_MEDIA_TYPES and in_body != declared:
        raise _invalid(f"Content-Type {declared} does not match the manifest's mediaType {in_body}")
    media_type = in_body or (declared if declared in MANIFEST_MEDIA_TYPES else None)
    if media_type is None:
        # OCI allows mediaType to be omitted; fall back to the document's shape.
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type in DOCKER_SCHEMA1:
        raise _invalid(SCHEMA1_MESSAGE)
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise _invalid(
            f"unsupported manifest media type {media_type!r}; accepted: " + ", ".join(MANIFEST_MEDIA_TYPES)
        )

    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    subject = _descriptor(document["subject"], "subject") if document.get("subject") is not None else None
    annotations = _string_map(document.get("annotations"), "annotations")

    if media_type in INDEXES:
        if "config" in document or "layers" in document:
            raise _invalid("an index has manifests, not config or layers")
        children = _descriptor_list(document.get("manifests"), "manifests")
        for i, child in enumerate(children):
            if child.media_type in DOCKER_SCHEMA1:
                raise _invalid(f"manifests[{i}]: {SCHEMA1_MESSAGE}")
        return Manifest(media_type, None, [], children, subject, artifact_type, annotations)

    if "manifests" in document:
        raise _invalid("an image manifest has config and layers, not manifests")
    config = _descriptor(document.get("config"), "config")
    layers = _descriptor_list(document.get("layers", []), "layers")
    required = [config] + [layer for layer in layers if layer.media_type not in NON_DISTRIBUTABLE]
    return Manifest(media_type, config, required, [], subject, artifact_type, annotations)


def effective_artifact_type(manifest: Manifest) -> str | None:
    """The referrers API's artifactType: the manifest's own, else its config's media type."""
    if manifest.artifact_type:
        return manifest.artifact_type
    if manifest.config is not None:
        return manifest.config.media_type
    return None
