"""OCI -> Docker schema 2 renditions: what converts, what does not, and stable bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.oci.convert import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    docker_manifest,
    docker_manifest_list,
    index_children,
)
from registry.oci.manifest import parse_manifest

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
FOREIGN = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def desc(media_type: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(n), "size": 100 + n, **extra}


def oci_manifest(*layers: dict[str, Any], config_type: str = OCI_CONFIG, **extra: Any) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(config_type, 1),
        "layers": list(layers), **extra,
    }).encode()


def test_image_manifest_becomes_docker_schema2() -> None:
    source = oci_manifest(
        desc(GZIP, 2, annotations={"a": "b"}), desc(TAR, 3), desc(FOREIGN, 4, urls=["https://example.com/l"]),
        annotations={"org.opencontainers.image.created": "2024"}, artifactType="application/x",
        subject=desc(OCI_MANIFEST, 9),
    )
    rendered = docker_manifest(source)
    assert rendered is not None
    assert json.loads(rendered) == {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": 101, "digest": digest(1)},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 102, "digest": digest(2)},
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "size": 103, "digest": digest(3)},
            {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 104,
             "digest": digest(4), "urls": ["https://example.com/l"]},
        ],
    }
    # Docker's layout: 3-space indent, Docker's key order; and a manifest Berth accepts.
    assert rendered.startswith(b'{\n   "schemaVersion": 2,\n   "mediaType": "application/vnd.docker')
    assert list(json.loads(rendered)["layers"][0]) == ["mediaType", "size", "digest"]
    assert parse_manifest(rendered, DOCKER_MANIFEST).media_type == DOCKER_MANIFEST


def test_same_source_same_bytes_whatever_the_source_layout() -> None:
    source = oci_manifest(desc(GZIP, 2))
    spaced = json.dumps(json.loads(source), indent=7).encode()
    reordered = json.dumps(dict(reversed(list(json.loads(source).items())))).encode()
    assert docker_manifest(source) == docker_manifest(spaced) == docker_manifest(reordered)
    # Annotations alone do not change the rendition.
    assert docker_manifest(oci_manifest(desc(GZIP, 2), annotations={"x": "y"})) == docker_manifest(source)


def test_manifest_without_layers_or_media_type_field() -> None:
    document = json.loads(oci_manifest())
    del document["mediaType"]
    rendered = docker_manifest(json.dumps(document).encode())
    assert rendered is not None and json.loads(rendered)["layers"] == []


@pytest.mark.parametrize("source", [
    oci_manifest(desc(ZSTD, 2)),  # Docker schema 2 has no zstd
    oci_manifest(desc(GZIP, 2), desc("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", 3)),
    oci_manifest(desc(GZIP, 2), config_type="application/vnd.oci.empty.v1+json"),  # an artifact
    oci_manifest(desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", 2),
                 config_type="application/vnd.cncf.helm.config.v1+json"),
    oci_manifest(desc("application/vnd.in-toto+json", 2)),  # a BuildKit attestation
    oci_manifest(desc(GZIP, 2), config_type=DOCKER_CONFIG),  # an unknown (mixed) config type
    json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode(),
    b"not json",
])
def test_not_convertible(source: bytes) -> None:
    assert docker_manifest(source) is None


def platform(arch: str, os: str = "linux", **extra: Any) -> dict[str, Any]:
    return {"architecture": arch, "os": os, **extra}


def index(*entries: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries), **extra}).encode()


def rendition_of(n: int) -> dict[str, Any]:
    return {"mediaType": DOCKER_MANIFEST, "size": 500 + n, "digest": digest(1000 + n)}


def test_index_becomes_manifest_list() -> None:
    attestation = desc(OCI_MANIFEST, 12, platform=platform("unknown", "unknown"),
                       annotations={"vnd.docker.reference.type": "attestation-manifest"})
    source = index(
        desc(OCI_MANIFEST, 10, platform=platform("amd64"), annotations={"x": "y"}),
        desc(OCI_MANIFEST, 11, platform=platform("arm64", variant="v8", extra="dropped", **{"os.version": "1"})),
        attestation,
        desc(DOCKER_MANIFEST, 13, platform=platform("s390x")),  # Docker-typed: kept as it is
        annotations={"a": "b"},
    )
    assert [c.platform_image for c in index_children(source) or []] == [True, True, False, True]
    rendered = docker_manifest_list(source, {digest(10): rendition_of(10), digest(11): rendition_of(11),
                                             digest(12): None})
    assert rendered is not None
    assert json.loads(rendered) == {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {**rendition_of(10), "platform": {"architecture": "amd64", "os": "linux"}},
            {**rendition_of(11), "platform": {"architecture": "arm64", "os": "linux", "os.version": "1",
                                              "variant": "v8"}},
            {"mediaType": DOCKER_MANIFEST, "size": 113, "digest": digest(13),
             "platform": {"architecture": "s390x", "os": "linux"}},
        ],
    }
    assert list(json.loads(rendered)["manifests"][1]["platform"]) == ["architecture", "os", "os.version", "variant"]
    assert parse_manifest(rendered, DOCKER_MANIFEST_LIST).media_type == DOCKER_MANIFEST_LIST


def test_index_with_an_image_that_cannot_be_converted_has_no_rendition() -> None:
    source = index(desc(OCI_MANIFEST, 10, platform=platform("amd64")),
                   desc(OCI_MANIFEST, 11, platform=platform("arm64")))
    assert docker_manifest_list(source, {digest(10): rendition_of(10), digest(11): None}) is None
    nested = index(desc(OCI_INDEX, 10, platform=platform("amd64")))
    assert docker_manifest_list(nested, {}) is None


def test_index_of_only_attestations_has_no_rendition() -> None:
    source = index(desc(OCI_MANIFEST, 12, platform=platform("unknown", "unknown")))
    assert docker_manifest_list(source, {digest(12): None}) is None
