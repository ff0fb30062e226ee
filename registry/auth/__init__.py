"""Who may do what. The registry core asks `Authorizer.authorize` before every handler runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request


@dataclass(frozen=True)
class Access:
    """One resource and the actions a request needs on it (Docker token scope grammar)."""

    type: str  # "repository" or "registry"
    name: str
    actions: tuple[str, ...]

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


class Authorizer(Protocol):
    async def authorize(self, request: Request, needed: list[Access]) -> None:
        """Return if every access is granted; raise a RegistryError (401/403) otherwise."""


class AllowAll:
    """BERTH_AUTH=none: every request is allowed (local development and tests of the core)."""

    async def authorize(self, request: Request, needed: list[Access]) -> None:
        return None
