"""Block writes for the push path: Put Block and Put Block List as plain signed requests.

Through the SDK each costs about 2-3 ms of CPU (a client object, a dozen pipeline policies,
XML serialisation); a small image's push makes four of them. These requests go on the shared
aiohttp session, are signed as the SDK signs them (SharedKey with an account key, else an
Entra ID token), spell block ids as the SDK does (base64 of the id), and fail with the same
azure.core exceptions, so content.py's conditions and commit marks work unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from email.utils import formatdate
from typing import Any

import aiohttp
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from yarl import URL

from registry.storage.storage_token import StorageToken

API_VERSION = "2021-08-06"
_TRANSIENT = {408, 500, 502, 503, 504}
_ERRORS = {404: ResourceNotFoundError, 409: ResourceExistsError, 412: ResourceModifiedError}
# The headers SharedKey signs by position, before the x-ms-* ones (Date is sent as x-ms-date).
_SIGNED = ("Content-Encoding", "Content-Language", "Content-Length", "Content-MD5", "Content-Type", "Date",
           "If-Modified-Since", "If-Match", "If-None-Match", "If-Unmodified-Since", "Range")


def _block_id(block_id: str) -> str:
    return base64.b64encode(block_id.encode()).decode()


class BlobRequests:
    def __init__(self, session: aiohttp.ClientSession, account: str, account_key: str | None = None,
                 credential: Any = None):
        self._session = session
        self._account = account
        self._key = base64.b64decode(account_key) if account_key else None
        self._token = StorageToken(credential) if credential is not None else None

    async def put_block(self, blob_url: str, block_id: str, data: bytes) -> None:
        url = URL(blob_url).update_query({"comp": "block", "blockid": _block_id(block_id)})
        # Content-Type is named, as it is signed: aiohttp would otherwise add one unsigned.
        await self._send("PUT", url, data, {"Content-Type": "application/octet-stream"},
                         f"staging a block of {blob_url}")

    async def put_block_list(self, blob_url: str, committed: list[str], uncommitted: list[str],
                             metadata: dict[str, str], condition: dict[str, str]) -> str:
        """Commit the blocks, in order, with `metadata`; `condition`: If-Match or If-None-Match.
        Returns the new etag."""
        blocks = "".join(f"<Committed>{_block_id(b)}</Committed>" for b in committed)
        blocks += "".join(f"<Uncommitted>{_block_id(b)}</Uncommitted>" for b in uncommitted)
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{blocks}</BlockList>'.encode()
        # Plain lowercase names: SharedKey orders x-ms-* headers as the service does, which only
        # plain sorting matches for them ('-' and '_' sort differently there).
        if not all(name.isalnum() and name.islower() for name in metadata):
            raise ValueError(f"metadata names must be lowercase letters and digits: {sorted(metadata)}")
        headers = {"Content-Type": "application/xml", **condition,
                   **{f"x-ms-meta-{name}": value for name, value in metadata.items()}}
        url = URL(blob_url).update_query({"comp": "blocklist"})
        response_headers = await self._send("PUT", url, body, headers, f"committing {blob_url}")
        return response_headers["ETag"]

    async def _send(self, verb: str, url: URL, body: bytes, extra: dict[str, str], what: str) -> Any:
        for attempt in range(2):  # one retry, as the SDK's policy here: writes are idempotent or marked
            headers = {"x-ms-version": API_VERSION, "x-ms-date": formatdate(usegmt=True),
                       "Content-Length": str(len(body)), **extra}
            headers["Authorization"] = await self._authorization(verb, url, headers)
            try:
                async with self._session.request(verb, url, data=body, headers=headers) as response:
                    if response.status in (200, 201):
                        return response.headers
                    if response.status == 401 and self._token is not None and not attempt:
                        self._token.refused(headers["Authorization"])  # a new token, once
                        continue
                    text = await response.text()
                    if response.status not in _TRANSIENT or attempt:
                        code = response.headers.get("x-ms-error-code")
                        error = _ERRORS.get(response.status, HttpResponseError)(
                            f"{what} failed: {response.status} {code or ''} {text[:300]}")
                        error.status_code, error.error_code = response.status, code
                        raise error
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt:
                    raise
            await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    async def _authorization(self, verb: str, url: URL, headers: dict[str, str]) -> str:
        if self._key is not None:
            lowered = {name.lower(): value for name, value in headers.items()}
            fields = [lowered.get(name.lower(), "") for name in _SIGNED]
            if fields[2] == "0":
                fields[2] = ""  # a zero Content-Length is signed as empty
            canonical_headers = "".join(f"{name}:{lowered[name].strip()}\n"
                                        for name in sorted(lowered) if name.startswith("x-ms-"))
            resource = f"/{self._account}{url.raw_path}"
            for name, value in sorted(url.query.items()):
                resource += f"\n{name.lower()}:{value}"
            to_sign = "\n".join([verb, *fields]) + "\n" + canonical_headers + resource
            signature = hmac.new(self._key, to_sign.encode(), hashlib.sha256).digest()
            return f"SharedKey {self._account}:{base64.b64encode(signature).decode()}"
        assert self._token is not None, "neither an account key nor a credential"
        return await self._token.header()
