"""The Docker token scope grammar (`repository:<name>:<actions>`) and access intersection."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CATALOG = ("registry", "catalog")


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        """The scope as an entry of a token's `access` claim."""
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(text: str) -> Scope | None:
    """`type:name:actions`; the name may itself hold ':' (a registry host with a port). None if malformed."""
    type_, sep, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not type_ or not name:
        return None
    parsed = frozenset(a for a in actions.split(",") if a)
    return Scope(type_, name, parsed) if parsed else None


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Every scope in the given parameters (each may hold several, separated by spaces)."""
    scopes: list[Scope] = []
    for value in values:
        for item in value.split():
            scope = parse_scope(item)
            if scope is not None:
                scopes.append(scope)
    return merge_scopes(scopes)


def merge_scopes(scopes: Iterable[Scope]) -> list[Scope]:
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for scope in scopes:
        key = (scope.type, scope.name)
        merged[key] = merged.get(key, frozenset()) | scope.actions
    return [Scope(t, n, a) for (t, n), a in merged.items() if a]


def covers(granted: Iterable[Scope], type_: str, name: str, action: str) -> bool:
    return any(s.type == type_ and s.name == name and (action in s.actions or "*" in s.actions) for s in granted)
