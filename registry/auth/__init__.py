"""Who may do what. The route table asks an `Authorizer` before any handler runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request

from registry.oci.scope import Scope, covers


@dataclass(frozen=True)
class Access:
    """One resource and the actions a request needs on it."""

    type: str  # "repository" or "registry"
    name: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Grant:
    """What the caller of one request may do: who it is and the scopes its token carries."""

    subject: str
    scopes: tuple[Scope, ...] = field(default=())
    everything: bool = False

    def allows(self, type_: str, name: str, action: str) -> bool:
        return self.everything or covers(self.scopes, type_, name, action)


class Authorizer(Protocol):
    async def authorize(self, request: Request, needed: list[Access], wanted: list[Access] | None = None) -> Grant:
        """The caller's grant if it covers every `needed` access; raise a RegistryError (401,
        its challenge naming `needed` and `wanted`) otherwise."""
        ...


class AllowAll:
    """BERTH_AUTH=none: every request is allowed (local development only)."""

    async def authorize(self, request: Request, needed: list[Access], wanted: list[Access] | None = None) -> Grant:
        return Grant("anonymous", everything=True)
