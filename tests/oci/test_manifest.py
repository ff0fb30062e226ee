"""Manifest validation: what is accepted, what is refused and why."""

from __future__ import annotations

import json

import pytest

from registry.oci.errors import RegistryError
from registry.oci.manifest import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    effective_artifact_type,
    parse_manifest,
)

DIGEST = "sha256:" + "1" * 64
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 10}
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "2" * 64, "size": 20}
FOREIGN = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "digest": "sha256:" + "3" * 64, "size": 30, "urls": ["https://example.invalid/layer"]}


def encode(document: dict) -> bytes:
    return json.dumps(document).encode()


def test_image_manifest_lists_required_blobs() -> None:
    manifest = parse_manifest(encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                                      "layers": [LAYER, FOREIGN]}), OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST
    # Foreign layers live elsewhere by design, so they are not required here.
    assert [str(d.digest) for d in manifest.blobs] == [DIGEST, LAYER["digest"]]
    assert effective_artifact_type(manifest) == CONFIG["mediaType"]


def test_media_type_may_come_from_header_or_shape() -> None:
    body = encode({"schemaVersion": 2, "config": CONFIG, "layers": []})
    assert parse_manifest(body, DOCKER_MANIFEST).media_type == DOCKER_MANIFEST
    assert parse_manifest(body, None).media_type == OCI_MANIFEST
    index = encode({"schemaVersion": 2, "manifests": []})
    assert parse_manifest(index, "application/json").media_type == OCI_INDEX


def test_artifact_with_subject() -> None:
    manifest = parse_manifest(encode({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": DIGEST, "size": 2},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 5},
        "annotations": {"a": "b"},
    }), OCI_MANIFEST)
    assert str(manifest.subject.digest) == DIGEST
    assert effective_artifact_type(manifest) == "application/x.sig"
    assert manifest.annotations == {"a": "b"}


@pytest.mark.parametrize("document, fragment", [
    ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
    ({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v1+json"}, "schema 1"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}, "config"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": {}}, "layers"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {**CONFIG, "size": "10"}, "layers": []}, "size"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {**CONFIG, "size": True}, "layers": []}, "size"),
    ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST}]}, "size"),
    ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "config": CONFIG}, "index"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": [], "annotations": {"a": 1}},
     "annotations"),
    ({"schemaVersion": 2, "mediaType": "text/plain"}, "unsupported"),
])
def test_refusals_say_why(document: dict, fragment: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_manifest(encode(document), None)
    assert caught.value.error.code == "MANIFEST_INVALID"
    assert fragment in caught.value.message


def test_header_and_body_media_types_must_agree() -> None:
    body = encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": []})
    with pytest.raises(RegistryError):
        parse_manifest(body, DOCKER_MANIFEST)
