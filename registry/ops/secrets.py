"""Reads the secrets credential sets refer to: `env:NAME` (an app setting), `file:/path` (local
development), `keyvault:https://<vault>.vault.azure.net/secrets/<name>[/<version>]` (read with
the app's managed identity, which needs Key Vault Secrets User on the secret).

Key Vault references go only to Key Vault's own hosts: the identity's token is never sent to an
address a credential set's author chose.

A set whose password is `identity:<audience>` holds no secret: the app's managed identity gets
an Entra token for that audience (ACR: https://containerregistry.azure.net; another Berth: its
app ID URI) and exchanges it at the set's own registry (`/oauth2/exchange`, as `az acr login`
does) for a refresh token, the password of the token user. The Entra token goes only to the
registry the set names, over the scheme the import or cache rule names.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from registry.ops.upstream import SourceImage, registry_host
from registry.storage.credential_sets import IDENTITY, TOKEN_USER, CredentialSet, CredentialSets

VAULT_SUFFIXES = (".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net")
VAULT_SCOPE = "https://vault.azure.net/.default"
MAX_SECRET = 16 * 1024


class SecretUnavailable(Exception):
    """A reference that cannot be read; the message names the reference, never a value."""


CredentialFactory = Callable[[], Awaitable[Any]]  # an azure.identity.aio credential


class SecretReader:
    def __init__(self, session: aiohttp.ClientSession, credential: CredentialFactory | None = None):
        self._session = session
        self._credential = credential

    async def login(self, credential_set: CredentialSet, source: SourceImage) -> tuple[str, str]:
        """The user name and password a set refers to (for `source`, of the set's registry)."""
        if credential_set.password.startswith(IDENTITY):
            return TOKEN_USER, await self._exchange(credential_set.password[len(IDENTITY):], source)
        username = credential_set.username
        if username.startswith(("env:", "file:", "keyvault:")):
            username = await self.read(username)
        return username, await self.read(credential_set.password)

    async def read(self, reference: str) -> str:
        kind, _, where = reference.partition(":")
        if kind == "env":
            value = os.environ.get(where)
            if not value:
                raise SecretUnavailable(f"the environment variable {where} is not set")
            return value
        if kind == "file":
            try:
                return Path(where).read_text()[:MAX_SECRET].rstrip("\n")
            except OSError as error:
                raise SecretUnavailable(f"{where} cannot be read: {error.strerror}") from None
        if kind == "keyvault":
            return await self._key_vault(where)
        raise SecretUnavailable(f"{reference[:80]!r} is not a reference Berth reads")

    async def _key_vault(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "https" or not (parts.hostname or "").endswith(VAULT_SUFFIXES) \
                or not parts.path.startswith("/secrets/"):
            raise SecretUnavailable(f"{uri[:200]} is not a Key Vault secret URI")
        if self._credential is None:
            raise SecretUnavailable("Key Vault references need a managed identity (BERTH_STORAGE_ACCOUNT)")
        credential = await self._credential()
        token = await credential.get_token(VAULT_SCOPE)
        document = await _json(self._session.get(uri, params={"api-version": "7.4"}, allow_redirects=False,
                                                 headers={"Authorization": f"Bearer {token.token}"}),
                               f"Key Vault, for {uri[:200]},")
        value = document.get("value") if isinstance(document, dict) else None
        if not isinstance(value, str) or not value:
            raise SecretUnavailable(f"{uri[:200]} holds no value")
        return value


    async def _exchange(self, audience: str, source: SourceImage) -> str:
        """A refresh token of `source`'s registry for the app's identity (ACR's token exchange)."""
        if source.scheme != "https" and not _loopback(source.api_host):
            raise SecretUnavailable(f"{source.registry}: a managed identity's token goes only over https")
        if self._credential is None:
            raise SecretUnavailable("identity: sets need a managed identity (BERTH_MANAGED_IDENTITY_CLIENT_ID)")
        try:
            token = await (await self._credential()).get_token(audience.rstrip("/") + "/.default")
        except Exception as error:  # the credential chain's own errors: no secret in them
            raise SecretUnavailable(f"no managed-identity token for {audience}: {type(error).__name__}") from None
        url = f"{source.scheme}://{source.api_host}/oauth2/exchange"
        form = {"grant_type": "access_token", "service": registry_host(source.registry), "access_token": token.token}
        document = await _json(self._session.post(url, data=form, allow_redirects=False),
                               f"{source.registry}, exchanging the managed identity's token,")
        refresh = document.get("refresh_token") if isinstance(document, dict) else None
        if not isinstance(refresh, str) or not refresh:
            raise SecretUnavailable(f"{source.registry} answered the exchange without a refresh token")
        return refresh


def _loopback(host: str) -> bool:
    """Whether `host[:port]` is this machine (a local test registry may lack TLS)."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _json(request: Any, what: str) -> Any:
    """The JSON body of a 200 answer to `request` (an aiohttp request, not yet sent)."""
    try:
        async with request as response:
            if response.status != 200:
                raise SecretUnavailable(f"{what} answered HTTP {response.status}")
            return await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise SecretUnavailable(f"{what} did not answer: {type(error).__name__}") from None


class VaultIdentity:
    """The app's identity for Key Vault: made on first use, kept, closed with its owner."""

    def __init__(self, managed_identity_client_id: str | None):
        self._client_id = managed_identity_client_id
        self._credential: Any = None

    async def __call__(self) -> Any:
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

            self._credential = (ManagedIdentityCredential(client_id=self._client_id) if self._client_id
                                else DefaultAzureCredential())
        return self._credential

    async def close(self) -> None:
        if self._credential is not None:
            await self._credential.close()
            self._credential = None


def key_vault_credential(managed_identity_client_id: str | None) -> VaultIdentity:
    return VaultIdentity(managed_identity_client_id)


async def login_with_set(sets: CredentialSets, reader: SecretReader, name: str,
                         source: SourceImage) -> tuple[str, str]:
    """The login a credential set holds for `source`'s registry: a set is used only for the
    registry it names, whoever asks. A secret that cannot be read marks the set unhealthy."""
    credential_set = await sets.get(name)
    if registry_host(credential_set.login_server) != registry_host(source.registry):
        raise SecretUnavailable(f"credential set {name} is for {credential_set.login_server}, "
                                f"not {source.registry}")
    try:
        return await reader.login(credential_set, source)
    except SecretUnavailable as error:
        await sets.record(name, str(error))
        raise
