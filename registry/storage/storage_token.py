"""The Entra ID token the lean storage requests (table_requests.py, blob_requests.py) carry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

STORAGE_SCOPE = "https://storage.azure.com/.default"
RENEW_SECONDS = 300  # as azure-identity's own refresh offset


class StorageToken:
    """One token at a time: fetched by one caller while the others wait (a cold start's burst
    of requests makes one call to the identity endpoint), renewed before it expires, and
    dropped when storage refuses it (the SDK's bearer policy does the same)."""

    def __init__(self, credential: Any):
        self._credential = credential
        self._token: tuple[str, float] | None = None
        self._fetching = asyncio.Lock()

    def _fresh(self) -> str | None:
        if self._token is None or self._token[1] < time.time() + RENEW_SECONDS:
            return None
        return self._token[0]

    async def header(self) -> str:
        token = self._fresh()
        if token is None:
            async with self._fetching:
                token = self._fresh()
                if token is None:
                    fetched = await self._credential.get_token(STORAGE_SCOPE)
                    self._token = (fetched.token, float(fetched.expires_on))
                    token = fetched.token
        return f"Bearer {token}"

    def refused(self, header: str) -> None:
        """Storage answered 401 to `header`: the next request fetches a new token."""
        if self._token is not None and header == f"Bearer {self._token[0]}":
            self._token = None
