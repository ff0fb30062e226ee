"""Names, tags, references and digests by the OCI grammar."""

from __future__ import annotations

import pytest

from registry.oci.digest import Digest, digest_of, parse_digest
from registry.oci.errors import RegistryError
from registry.oci.names import parse_reference, validate_name, validate_tag


@pytest.mark.parametrize("name", [
    "a", "library/ubuntu", "a.b/c_d/e__f/g-h", "a---b", "0/1/2", "x" * 255, "team/app/sub.component",
])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "A", "a/", "/a", "a//b", "a_", "a..b", "a___b", "a.-b", "-a", "a b", "a/B", "a:b", "x" * 256, "é",
])
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as caught:
        validate_name(name)
    assert caught.value.error.code == "NAME_INVALID"


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_x", "A-b.c_d", "a" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a+b"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(RegistryError):
        validate_tag(tag)


def test_digests_parse_strictly() -> None:
    hex64 = "a" * 64
    assert parse_digest(f"sha256:{hex64}") == Digest("sha256", hex64)
    assert str(parse_digest("sha512:" + "0" * 128)) == "sha512:" + "0" * 128
    for bad in (f"sha256:{hex64[:-1]}", f"sha256:{hex64}0", "sha256:" + "A" * 64, "sha1:" + "0" * 40,
                f"SHA256:{hex64}", hex64, f"sha256:{hex64[:-1]}g", "sha512:" + "0" * 64):
        with pytest.raises(RegistryError) as caught:
            parse_digest(bad)
        assert caught.value.error.code == "DIGEST_INVALID", bad


def test_reference_is_a_tag_or_a_digest() -> None:
    assert parse_reference("latest") == "latest"
    digest = digest_of(b"x")
    assert parse_reference(str(digest)) == digest
    with pytest.raises(RegistryError):
        parse_reference("sha256:nothex")
