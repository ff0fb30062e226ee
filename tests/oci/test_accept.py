"""Accept header parsing for manifest GET/HEAD: lists, parameters, q=0, wildcards."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.oci.accept import parse_accept

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.mark.parametrize(("headers", "oci", "docker"), [
    ([], True, True),  # no Accept: anything
    ([""], True, True),
    ([f"{OCI}"], True, False),
    ([f"{DOCKER}"], False, True),
    ([f"{DOCKER}, {OCI}"], True, True),
    ([DOCKER, OCI], True, True),  # several headers are one list
    ([f"{DOCKER};q=0.5,{OCI}; q=0.9"], True, True),
    ([f"{OCI.upper()}"], True, False),  # media types are case-insensitive
    (["*/*"], True, True),
    (["application/*"], True, True),
    (["text/*"], False, False),
    ([f"{OCI};q=0, */*"], False, True),  # the most specific range decides
    ([f"*/*;q=0, {DOCKER}"], False, True),
    ([f"application/*;q=0, {OCI}"], True, False),
    ([f"{OCI};Q=0"], False, False),
    ([f"{OCI};q=0.000"], False, False),
    ([f"{OCI};q=0.001"], True, False),
    ([f"{OCI};charset=utf-8;q=1"], True, False),  # other parameters are ignored
    (["garbage"], True, True),  # nothing usable: as if there were no Accept
    ([f"garbage, {DOCKER}"], False, True),
    ([f"{OCI};q=2, {DOCKER}"], False, True),  # a malformed q drops that entry
    (["*/json"], True, True),
])
def test_allows(headers: list[str], oci: bool, docker: bool) -> None:
    accept = parse_accept(headers)
    assert accept.allows(OCI) is oci
    assert accept.allows(DOCKER) is docker


@given(st.lists(st.text(max_size=40), max_size=5))
def test_any_header_text_parses(headers: list[str]) -> None:
    parse_accept(headers).allows(OCI)
