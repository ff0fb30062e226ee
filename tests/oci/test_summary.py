"""summarize / config_platform: what the ACR metadata API reports from a manifest's bytes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from registry.oci.summary import Platform, config_platform, summarize

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def test_image_size_counts_the_manifest_config_and_layers() -> None:
    body = json.dumps({"schemaVersion": 2, "config": {"mediaType": "c", "digest": DIGEST, "size": 10},
                       "layers": [{"mediaType": "l", "digest": OTHER, "size": 100},
                                  {"mediaType": "l", "digest": OTHER, "size": 5}]}).encode()
    summary = summarize(body)
    assert summary.image_size == len(body) + 115
    assert (summary.config_media_type, summary.config_digest, summary.references) == ("c", DIGEST, [])


def test_an_index_lists_its_platforms() -> None:
    body = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "m", "digest": DIGEST, "size": 7, "platform": {"architecture": "arm64", "os": "linux"}},
        {"mediaType": "m", "digest": OTHER, "size": 3},
    ]}).encode()
    summary = summarize(body)
    assert summary.image_size == len(body) + 10 and summary.config_media_type is None
    assert summary.references == [Platform(DIGEST, "arm64", "linux"), Platform(OTHER, None, None)]


@given(st.binary(max_size=200))
def test_any_bytes_give_a_summary(body: bytes) -> None:
    assert summarize(body).image_size >= len(body)
    config_platform(body)


def test_config_platform() -> None:
    assert config_platform(b'{"architecture": "amd64", "os": "windows"}') == ("amd64", "windows")
    assert config_platform(b'{"architecture": 5}') == (None, None)
    assert config_platform(b"[]") == (None, None)
