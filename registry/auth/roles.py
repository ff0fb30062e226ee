"""Principals and the roles they hold, named as in Azure Container Registry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from registry.oci.errors import RegistryError
from registry.oci.names import validate_name
from registry.oci.scope import CATALOG, Scope

# Built-in roles -> repository actions (ACR's data-plane roles; Owner also lists the catalog).
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "AcrPull": frozenset({"pull", "metadata_read"}),
    "AcrPush": frozenset({"pull", "push", "metadata_read", "metadata_write"}),
    "AcrDelete": frozenset({"delete", "metadata_read"}),
    "Owner": frozenset({"pull", "push", "delete", "metadata_read", "metadata_write"}),
}
CATALOG_ROLES = frozenset({"Owner"})

# Repository-scoped tokens use ACR scope-map actions.
SCOPE_MAP_ACTIONS: dict[str, str] = {
    "content/read": "pull",
    "content/write": "push",
    "content/delete": "delete",
    "metadata/read": "metadata_read",
    "metadata/write": "metadata_write",
}


@dataclass(frozen=True)
class Rule:
    """Actions on the repositories a pattern matches: `*`, `prefix/*` or an exact name."""

    pattern: str
    actions: frozenset[str]

    def matches(self, repository: str) -> bool:
        if self.pattern == "*":
            return True
        if self.pattern.endswith("/*"):
            return repository.startswith(self.pattern[:-1])
        return repository == self.pattern


@dataclass(frozen=True)
class Principal:
    kind: str  # "admin", "token", "entra" or "anonymous"
    id: str
    rules: tuple[Rule, ...] = ()
    catalog: bool = False
    app_roles: tuple[str, ...] = ()  # as the Entra token carried them, for refresh tokens
    generation: str = ""  # a scoped token's password generation, for refresh tokens
    refresh_until: int | None = None  # an Entra principal's refresh tokens end by then (epoch s)

    @property
    def subject(self) -> str:
        return f"{self.kind}:{self.id}"

    def actions_on(self, repository: str) -> frozenset[str]:
        actions: frozenset[str] = frozenset()
        for rule in self.rules:
            if rule.matches(repository):
                actions |= rule.actions
        return actions

    def grant(self, requested: Iterable[Scope]) -> list[Scope]:
        """The intersection of what was asked and what this principal holds."""
        granted = []
        for scope in requested:
            if scope.type == "repository":
                held = self.actions_on(scope.name)
                # `*` asks for everything the caller holds there (what `skopeo delete` requests).
                allowed = held if "*" in scope.actions else scope.actions & held
            elif (scope.type, scope.name) == CATALOG and self.catalog:
                allowed = scope.actions & {"*"}
            else:
                allowed = frozenset()
            if allowed:
                granted.append(Scope(scope.type, scope.name, allowed))
        return granted


ALL_ACTIONS = ROLE_ACTIONS["Owner"]


def admin(name: str) -> Principal:
    return Principal("admin", name, (Rule("*", ALL_ACTIONS),), catalog=True)


def anonymous(pull_allowed: bool) -> Principal:
    return Principal("anonymous", "anonymous", (Rule("*", frozenset({"pull"})),) if pull_allowed else ())


def from_roles(kind: str, id_: str, roles: Iterable[str], assignments: list[tuple[str, list[str]]]) -> Principal:
    """An Entra principal: app roles apply registry-wide unless per-repository assignments exist,
    in which case those assignments alone decide (they narrow a principal to named repositories).
    """
    roles = tuple(roles)
    if assignments:
        rules = tuple(Rule(pattern, _actions(names)) for pattern, names in assignments)
        return Principal(kind, id_, rules, catalog=False, app_roles=tuple(roles))
    role_names = [r for r in roles if r in ROLE_ACTIONS]
    rules = (Rule("*", _actions(role_names)),) if role_names else ()
    catalog = any(r in CATALOG_ROLES for r in role_names) or any(
        "pull" in ROLE_ACTIONS[r] for r in role_names
    )
    return Principal(kind, id_, rules, catalog=catalog, app_roles=tuple(roles))


def from_scope_map(name: str, scope_map: dict[str, list[str]], generation: str = "") -> Principal:
    """A repository-scoped token: {repository pattern: [content/read, ...]}."""
    rules = tuple(
        Rule(pattern, frozenset(SCOPE_MAP_ACTIONS[a] for a in actions if a in SCOPE_MAP_ACTIONS))
        for pattern, actions in scope_map.items()
    )
    return Principal("token", name, rules, catalog=False, generation=generation)


def _actions(role_names: Iterable[str]) -> frozenset[str]:
    actions: frozenset[str] = frozenset()
    for role in role_names:
        actions |= ROLE_ACTIONS.get(role, frozenset())
    return actions


def _valid_pattern(pattern: str) -> bool:
    if pattern == "*":
        return True
    try:
        validate_name(pattern[:-2] if pattern.endswith("/*") else pattern)
    except RegistryError:
        return False
    return True


def parse_scope_map(arguments: Iterable[str]) -> dict[str, list[str]]:
    """`REPO=content/read,content/write` arguments (REPO may be `*` or `prefix/*`) -> scope map."""
    scope_map: dict[str, list[str]] = {}
    for argument in arguments:
        pattern, sep, actions = argument.partition("=")
        names = [a.strip() for a in actions.split(",") if a.strip()]
        if not sep or not _valid_pattern(pattern):
            raise ValueError(f"{argument!r}: expected REPOSITORY=ACTION[,ACTION], REPOSITORY a name, prefix/* or *")
        unknown = [a for a in names if a not in SCOPE_MAP_ACTIONS]
        if unknown or not names:
            raise ValueError(f"{argument!r}: actions must be among {', '.join(SCOPE_MAP_ACTIONS)}")
        scope_map.setdefault(pattern, [])
        scope_map[pattern] += [a for a in names if a not in scope_map[pattern]]
    if not scope_map:
        raise ValueError("a token needs at least one --scope")
    return scope_map


def parse_role_assignment(pattern: str, role_names: Iterable[str]) -> list[str]:
    names = list(role_names)
    if not _valid_pattern(pattern):
        raise ValueError(f"{pattern!r} is not a repository name, prefix/* or *")
    unknown = [r for r in names if r not in ROLE_ACTIONS]
    if unknown or not names:
        raise ValueError(f"roles must be among {', '.join(ROLE_ACTIONS)}")
    return names
