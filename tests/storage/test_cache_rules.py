"""Which cache rule covers a repository, and what it maps it to (no storage involved)."""

from __future__ import annotations

import pytest

from registry.oci.errors import RegistryError
from registry.storage.cache_rules import CacheRule, check_rule

RULES = [CacheRule("hub", "docker.io/library/*", "*"), CacheRule("lib", "docker.io/library/*", "library/*"),
         CacheRule("dotnet", "mcr.microsoft.com/dotnet/*", "ms/dotnet/*"),
         CacheRule("pinned", "ghcr.io/org/special", "ms/dotnet/runtime")]


def best(repository: str) -> tuple[str, str] | None:
    found = [(rule, upstream) for rule in RULES if (upstream := rule.upstream_for(repository))]
    if not found:
        return None
    rule, upstream = max(found, key=lambda pair: pair[0].specificity())
    return rule.name, upstream


@pytest.mark.parametrize(("repository", "expected"), [
    ("nginx", ("hub", "docker.io/library/nginx")),  # Docker Hub's short names
    ("library/nginx", ("lib", "docker.io/library/nginx")),
    ("ms/dotnet/sdk", ("dotnet", "mcr.microsoft.com/dotnet/sdk")),
    ("ms/dotnet/runtime", ("pinned", "ghcr.io/org/special")),  # exact beats the prefix
    ("ms/dotnet", None),  # the prefix itself is not under it
    ("team/app", None),  # two parts: not a short name
])
def test_the_most_specific_rule_wins(repository: str, expected: tuple[str, str] | None) -> None:
    assert best(repository) == expected


@pytest.mark.parametrize(("source", "target"), [
    ("docker.io/library/nginx", "*"), ("docker.io/library/*", "nginx"), ("library/*", "library/*"),
    ("docker.io/library/*", "Bad/*"),
])
def test_malformed_rules_are_refused(source: str, target: str) -> None:
    with pytest.raises((ValueError, RegistryError)):  # a bad name is the name grammar's error
        check_rule(source, target)
