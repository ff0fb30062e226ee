"""What the ACR metadata API reports about a stored manifest, read from its bytes (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Platform:
    """One entry of an index: the manifest it names and the platform it is for."""

    digest: str
    architecture: str | None
    os: str | None


@dataclass(frozen=True)
class ManifestSummary:
    image_size: int  # the manifest's own bytes plus every blob or manifest it references
    config_media_type: str | None
    config_digest: str | None
    references: list[Platform] = field(default_factory=list)  # an index's entries


def _size(descriptor: Any) -> int:
    size = descriptor.get("size") if isinstance(descriptor, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def summarize(body: bytes) -> ManifestSummary:
    """The image size, config and platforms of a manifest or index that was validated at push.

    An image's size is the manifest plus its config and layers (as ACR counts it); an index's is
    the index plus the manifests it lists (their own bytes, not their layers: those belong to
    the child manifests, which are listed on their own).
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return ManifestSummary(len(body), None, None)
    config = document.get("config")
    layers = document.get("layers") if isinstance(document.get("layers"), list) else []
    entries = document.get("manifests") if isinstance(document.get("manifests"), list) else []
    size = len(body) + _size(config) + sum(_size(d) for d in layers) + sum(_size(d) for d in entries)
    references = []
    for entry in entries:
        if not isinstance(entry, dict) or not _text(entry.get("digest")):
            continue
        platform = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
        references.append(Platform(entry["digest"], _text(platform.get("architecture")), _text(platform.get("os"))))
    if not isinstance(config, dict):
        return ManifestSummary(size, None, None, references)
    return ManifestSummary(size, _text(config.get("mediaType")), _text(config.get("digest")), references)


def config_platform(config: bytes) -> tuple[str | None, str | None]:
    """(architecture, os) of an image config blob, (None, None) when it names neither."""
    try:
        document = json.loads(config)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    return _text(document.get("architecture")), _text(document.get("os"))
