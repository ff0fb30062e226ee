"""Content digests: strict parsing and hashing for the algorithms we accept."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from registry.oci.errors import DIGEST_INVALID, RegistryError

# Algorithm -> exact length of the lowercase hex encoding (OCI image-spec, descriptor.md).
ALGORITHMS = {"sha256": 64, "sha512": 128}
_ENCODED = re.compile(r"[a-f0-9]+")


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(text: str) -> Digest:
    """Parse `algorithm:hex`, refusing anything but sha256/sha512 in canonical form."""
    algorithm, sep, encoded = text.partition(":")
    length = ALGORITHMS.get(algorithm)
    if not sep or length is None:
        raise RegistryError(DIGEST_INVALID, f"unsupported or malformed digest {text[:150]!r}")
    if len(encoded) != length or not _ENCODED.fullmatch(encoded):
        raise RegistryError(DIGEST_INVALID, f"malformed {algorithm} digest {text[:150]!r}")
    return Digest(algorithm, encoded)


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
