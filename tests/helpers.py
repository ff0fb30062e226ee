"""Small protocol-level helpers the API tests share (they speak plain HTTP, like a client)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = sha256(data)
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def image_manifest(client: httpx.Client, repo: str, layers: int = 1, media_type: str = OCI_MANIFEST,
                   **extra: Any) -> bytes:
    """Push a config and `layers` random layers; return the manifest bytes (not pushed)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    push_blob(client, repo, config)
    layer_descriptors = []
    for _ in range(layers):
        layer = os.urandom(1024)
        push_blob(client, repo, layer)
        layer_descriptors.append(descriptor(OCI_LAYER, layer))
    config_type = OCI_CONFIG if media_type == OCI_MANIFEST else "application/vnd.docker.container.image.v1+json"
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": layer_descriptors,
        **extra,
    }
    return json.dumps(document).encode()


def put_manifest(client: httpx.Client, repo: str, reference: str, body: bytes,
                 media_type: str = OCI_MANIFEST) -> httpx.Response:
    return client.put(f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type})


def push_image(client: httpx.Client, repo: str, tag: str, **kwargs: Any) -> tuple[str, bytes]:
    body = image_manifest(client, repo, **kwargs)
    response = put_manifest(client, repo, tag, body, kwargs.get("media_type", OCI_MANIFEST))
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"], body


def error_codes(response: httpx.Response) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]
