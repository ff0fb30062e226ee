"""Repository names become table keys: one-to-one, legal for Table Storage, and in the same order."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from registry.oci.names import validate_name
from registry.storage.metadata import next_key, repository_key, repository_name

COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
names = st.from_regex(rf"\A{COMPONENT}(?:/{COMPONENT}){{0,3}}\Z").filter(lambda n: len(n) <= 255)
FORBIDDEN_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


@given(names)
def test_names_round_trip_through_keys(name: str) -> None:
    validate_name(name)
    key = repository_key(name)
    assert not FORBIDDEN_IN_KEYS.search(key)
    assert repository_name(key) == name


@given(names, names)
def test_keys_sort_like_names(a: str, b: str) -> None:
    # The catalog pages by key order; users expect lexical order of the names.
    assert (a < b) == (repository_key(a) < repository_key(b))


@given(st.text(alphabet="abc:;-_", min_size=1, max_size=8), st.text(alphabet="abc:;-_", max_size=8))
def test_next_key_bounds_a_prefix(prefix: str, rest: str) -> None:
    assert prefix <= prefix + rest < next_key(prefix)
