"""Repository names, tags and references, by the OCI Distribution grammar."""

from __future__ import annotations

import re

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import MANIFEST_UNKNOWN, NAME_INVALID, TAG_INVALID, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# Matched with fullmatch: `$` would also match before a trailing newline ("latest\n").
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

# Docker's limit on a full reference is 255 characters; the name is most of it.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise RegistryError(NAME_INVALID, f"invalid repository name {name[:300]!r}")
    return name


def is_tag(text: str) -> bool:
    return bool(_TAG.fullmatch(text))


def validate_tag(tag: str) -> str:
    if not is_tag(tag):
        raise RegistryError(TAG_INVALID, f"invalid tag {tag[:200]!r}")
    return tag


def parse_reference(reference: str) -> Digest | str:
    """A manifest reference to write: a digest (contains ':') or a tag; 400 if it is neither."""
    if ":" in reference:
        return parse_digest(reference)
    return validate_tag(reference)


def lookup_reference(reference: str) -> Digest | str:
    """A manifest reference to read or delete: 404 if it is neither a tag nor a digest, since
    nothing can be stored under it (as the reference registry answers)."""
    try:
        return parse_reference(reference)
    except RegistryError:
        raise RegistryError(MANIFEST_UNKNOWN, f"no manifest can exist under {reference[:200]!r}: "
                            "it is neither a tag nor a digest") from None
