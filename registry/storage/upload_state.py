"""An upload's state, signed into the URL the client continues it at (its `Location`).

The POST writes nothing: what a session row used to hold (owner, repository, expiry, digest
algorithm) travels with the client, together with how far the upload has come (offset, the
blob version it was committed as, the running hash, blocks staged but not yet committed).
Any instance can take the next request without reading anything first, and storage still
arbitrates: every commit is conditional on the blob version the state names.

The state is signed (HMAC-SHA256) with a key kept in the catalog table, so every instance
shares it without configuration; a client can present only a state this registry issued, for
its own upload, unaltered. It cannot make the registry accept bytes under a wrong digest (the
running hash is in the signed part), continue someone else's upload, or revive an expired one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables.aio import TableClient

KEY_PARTITION = "key"
KEY_ROW = "uploadstate"
VERSION = 1
_MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadStateCodec:
    """Signs upload states into tokens and reads back only tokens it signed."""

    def __init__(self, catalog: TableClient):
        self._catalog = catalog
        self._key: bytes | None = None
        self._loading = asyncio.Lock()

    async def ready(self) -> None:
        """Load (or, on a registry's first upload, create) the signing key; once per instance."""
        if self._key is not None:
            return
        async with self._loading:
            for _ in range(3):
                if self._key is not None:
                    return
                try:
                    row = await self._catalog.get_entity(KEY_PARTITION, KEY_ROW)
                    self._key = base64.b64decode(row["value"])
                    return
                except ResourceNotFoundError:
                    pass
                try:
                    value = base64.b64encode(secrets.token_bytes(32)).decode()
                    await self._catalog.create_entity({"PartitionKey": KEY_PARTITION, "RowKey": KEY_ROW,
                                                       "value": value})
                except ResourceExistsError:
                    pass  # another instance created it first: read theirs
            raise RuntimeError("the upload state key could not be read or created")

    def _mac(self, payload: bytes) -> bytes:
        assert self._key is not None, "ready() first"
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, fields: dict[str, Any]) -> str:
        payload = json.dumps({"v": VERSION, **fields}, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: str) -> dict[str, Any] | None:
        """The fields of a token this registry signed; None for anything else."""
        body, _, mac = token.partition(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(signature, self._mac(payload)):
            return None
        fields = json.loads(payload)
        if not isinstance(fields, dict) or fields.pop("v", None) != VERSION:
            return None
        return fields
