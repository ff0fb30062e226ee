"""A client of another registry (Docker Hub, MCR, GHCR, ACR, another Berth, the CNCF registry):
what import reads from upstream.

- Auth as registries answer it: a 401's `WWW-Authenticate: Bearer realm=...,service=...` is
  exchanged at the realm for a token (with Basic credentials if given, anonymous otherwise);
  `Basic` challenges get the credentials. Tokens are kept per repository until they expire.
- 429 and 503 are retried after `Retry-After` (or a backoff), a few times, then reported.
- Redirects (blob downloads go to CDNs and storage) are followed by hand: the Authorization
  header goes only to the registry's own host.
- Nothing upstream says is trusted: a manifest's bytes must hash to the digest asked for or
  announced (`Docker-Content-Digest`); a blob's bytes are hashed by the upload they stream into.
- The HTTP import endpoint's session connects through `GuardedConnector`, which vets every
  address it would connect to, after the URL is parsed and the name resolved exactly as for the
  connection (private, loopback, link-local and other non-global addresses are refused).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from registry.oci.convert import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from registry.oci.digest import Digest, digest_of, parse_digest
from registry.oci.errors import RegistryError
from registry.oci.names import validate_name, validate_tag

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
MAX_REDIRECTS = 5
ATTEMPTS = 4
MAX_WAIT_SECONDS = 30.0
CHUNK = 1024 * 1024
MAX_TOKEN_RESPONSE = 64 * 1024
MAX_REFERRER_PAGES = 20
MAX_REFERRERS = 1000
_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


class UpstreamError(Exception):
    """The upstream registry refused or failed; `status` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class UpstreamForbidden(UpstreamError):
    """An address the guard does not let this registry connect to."""

    def __init__(self, message: str):
        super().__init__(403, message)


@dataclass(frozen=True)
class SourceImage:
    scheme: str  # https, or http for a registry without TLS named so explicitly
    registry: str  # host[:port] as named; docker.io for Docker Hub
    repository: str
    reference: str  # a tag or a digest

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        separator = "@" if ":" in self.reference else ":"
        return f"{self.registry}/{self.repository}{separator}{self.reference}"


def parse_source(text: str, registry: str | None = None) -> SourceImage:
    """`[http[s]://][registry/]repository(:tag|@digest)`, as docker names images: no registry
    (or one without a dot, colon or `localhost`) is Docker Hub, where a one-part name is
    `library/<name>`; no tag is `latest`. `registry` names it separately (ACR's registryUri)."""
    scheme = "https"
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            scheme, text = prefix[:-3], text[len(prefix):]
    if registry:
        registry = registry.removeprefix("https://").removesuffix("/")
        if registry.startswith("http://"):
            scheme, registry = "http", registry[len("http://"):]
    else:
        first, _, rest = text.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, text = first, rest
        else:
            registry = DOCKER_HUB
    if registry in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        registry = DOCKER_HUB
    if not registry.isascii():
        raise ValueError(f"invalid registry {registry!r}")
    if "@" in text:
        name, _, reference = text.partition("@")
        parse_digest(reference)
        if ":" in name.rpartition("/")[2]:  # name:tag@digest: the digest decides
            name = name.rpartition(":")[0]
    else:
        name, colon, tag = text.rpartition(":")
        if not colon or "/" in tag:
            name, reference = text, "latest"
        else:
            reference = validate_tag(tag)
    if registry == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"
    if not registry or any(c in registry for c in "/?#@ "):
        raise ValueError(f"invalid registry {registry!r}")
    return SourceImage(scheme, registry, validate_name(name), reference)


_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
                   r"(?::[0-9]{1,5})?")


def registry_host(text: str) -> str:
    """A registry's host as import names it (`docker.io` for Docker Hub's aliases)."""
    host = text.strip().lower().removeprefix("https://").removeprefix("http://").rstrip("/")
    if host in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        return DOCKER_HUB
    if not _HOST.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
        raise ValueError(f"{text!r} is not a registry host (such as docker.io, ghcr.io or host:port)")
    return host


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAMETER.findall(rest))


def _retry_after(response: aiohttp.ClientResponse, attempt: int) -> float:
    raw = response.headers.get("Retry-After", "")
    wait = float(raw) if raw.isdigit() else 2.0 ** attempt
    return min(wait, MAX_WAIT_SECONDS)


# Non-global ranges `is_global` misses or that embed an IPv4 address (NAT64, 6to4, the old
# IPv4-compatible form, site-local), and Azure's platform endpoint (wireserver).
_REFUSED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "fec0::/10", "168.63.129.16/32"))


def private_address(address: str) -> bool:
    """Whether an address is one an import over HTTP must not reach: loopback, private,
    link-local (the metadata endpoint), multicast, reserved, or embedding such an address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or any(ip in network for network in _REFUSED_NETWORKS
                                                      if network.version == ip.version)


def refuse_private_registry(registry: str, allowed: Sequence[str]) -> None:
    """A registry named by a private address (or `localhost`), unless `allowed` names it: a
    cache rule must not point there. Names are checked again at every connection."""
    registry = registry.removeprefix("http://").removeprefix("https://").split("/")[0]
    try:
        host = urlsplit(f"//{registry}").hostname or registry
    except ValueError:
        raise UpstreamForbidden(f"{registry!r} is not a registry host") from None
    if registry in allowed or host in allowed:
        return
    try:
        private = private_address(host)
    except ValueError:
        private = host == "localhost"
    if private:
        raise UpstreamForbidden(f"{registry} is a private address; BERTH_UPSTREAM_PRIVATE_HOSTS may allow it")


class GuardedConnector(aiohttp.TCPConnector):
    """Connects only to global addresses, unless `allowed` names the host (`host` or
    `host:port`). The check sits where aiohttp turns the parsed URL's host into the addresses it
    connects to, so every spelling of an address (numeric, Unicode digits, names, redirects, the
    token realm) meets it, and a name cannot answer differently for the check and the connect."""

    def __init__(self, allowed: Sequence[str], setting: str = "BERTH_UPSTREAM_PRIVATE_HOSTS", **kwargs: Any):
        super().__init__(**kwargs)
        self._allowed = frozenset(entry for entry in allowed if "/" not in entry)
        # CIDR entries (`10.20.0.0/16`): a receiver inside the VNet, whatever its name.
        self._networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in allowed if "/" in entry)
        self._setting = setting

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[Any]:
        answers = await super()._resolve_host(host, port, traces)
        if host in self._allowed or f"{host}:{port}" in self._allowed:
            return answers
        for answer in answers:
            if private_address(answer["host"]) and not self._in_allowed_network(answer["host"]):
                raise UpstreamForbidden(f"{host} is or resolves to a private address ({answer['host']}); "
                                        f"{self._setting} may allow it")
        return answers

    def _in_allowed_network(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])
        return any(ip.version == network.version and ip in network for network in self._networks)


async def read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refusing more than `limit` bytes (a read returns what is buffered, not all)."""
    body = bytearray()
    try:
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise UpstreamError(413, f"{what} is larger than {limit} bytes")
    except (aiohttp.ClientError, TimeoutError) as error:
        raise UpstreamError(0, f"{what} was cut short: {error!r}") from None
    return bytes(body)


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise UpstreamError(502, f"{what} is not JSON") from None


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession, credentials: tuple[str, str] | None = None,
                 max_manifest_bytes: int = 4 * 1024 * 1024):
        self._session = session
        self._credentials = credentials
        self._max_manifest_bytes = max_manifest_bytes
        self._authorization: dict[tuple[str, str], tuple[str, float]] = {}  # (host, repo) -> (header, until)

    def _base(self, source: SourceImage) -> str:
        return f"{source.scheme}://{source.api_host}"

    async def manifest(self, source: SourceImage, reference: str) -> tuple[bytes, str, Digest]:
        """The manifest's bytes, media type and digest, verified."""
        path = f"/v2/{source.repository}/manifests/{reference}"
        async with self._request(source, "GET", path, {"Accept": ", ".join(MANIFEST_TYPES)}) as response:
            if response.status == 404:
                raise UpstreamError(404, f"{source.registry}/{source.repository}@{reference} was not found upstream")
            self._expect_ok(response, source, reference)
            body = await read_capped(response, self._max_manifest_bytes, f"the manifest {reference} of {source}")
            announced = response.headers.get("Docker-Content-Digest")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        expected = parse_digest(reference) if ":" in reference else parse_digest(announced) if announced else None
        digest = digest_of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise UpstreamError(502, f"{source.registry} sent a manifest for {reference} whose digest is {digest}, "
                                     f"not {expected}: nothing was stored")
        if media_type not in MANIFEST_TYPES:
            media_type = _declared_type(body) or media_type
        return body, media_type, digest

    async def head_manifest(self, source: SourceImage, reference: str) -> Digest:
        """What a tag names upstream now, by HEAD (Docker Hub does not count it as a pull)."""
        path = f"/v2/{source.repository}/manifests/{reference}"
        async with self._request(source, "HEAD", path, {"Accept": ", ".join(MANIFEST_TYPES)}) as response:
            if response.status == 404:
                raise UpstreamError(404, f"{source} was not found upstream")
            self._expect_ok(response, source, reference)
            announced = response.headers.get("Docker-Content-Digest")
        if announced:
            try:
                return parse_digest(announced)
            except RegistryError:
                pass
        return (await self.manifest(source, reference))[2]  # no digest said: GET it and hash it

    async def blob_size(self, source: SourceImage, digest: Digest) -> int:
        """The blob's length as upstream announces it (HEAD; redirects followed)."""
        async with self._request(source, "HEAD", f"/v2/{source.repository}/blobs/{digest}", {}) as response:
            if response.status == 404:
                raise UpstreamError(404, f"blob {digest} of {source} was not found upstream")
            self._expect_ok(response, source, str(digest))
            length = response.headers.get("Content-Length", "")
        if not length.isdigit():
            raise UpstreamError(502, f"{source.registry} did not say the length of blob {digest}")
        return int(length)

    async def blob(self, source: SourceImage, digest: Digest) -> AsyncIterator[bytes]:
        """The blob's bytes as they arrive (the caller's upload verifies the digest)."""
        async with self._request(source, "GET", f"/v2/{source.repository}/blobs/{digest}", {}) as response:
            if response.status == 404:
                raise UpstreamError(404, f"blob {digest} of {source} was not found upstream")
            self._expect_ok(response, source, str(digest))
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as error:
                raise UpstreamError(0, f"{source.registry} stopped sending blob {digest}: {error!r}") from None

    async def referrers(self, source: SourceImage, digest: Digest) -> list[dict[str, Any]]:
        """The referrers API's descriptors (every page); empty where upstream has no such API."""
        path: str | None = f"/v2/{source.repository}/referrers/{digest}"
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        while path and path not in seen and len(seen) < MAX_REFERRER_PAGES:
            seen.add(path)
            async with self._request(source, "GET", path, {"Accept": OCI_INDEX}) as response:
                if response.status in (404, 400, 405):
                    return found
                what = f"the referrers of {digest} at {source.registry}"
                self._expect_ok(response, source, what)
                document = _json(await read_capped(response, self._max_manifest_bytes, what), what)
                link = response.headers.get("Link", "")
            manifests = document.get("manifests") if isinstance(document, dict) else None
            found += [d for d in manifests or [] if isinstance(d, dict)][:MAX_REFERRERS - len(found)]
            match = re.match(r"\s*<([^>]+)>", link)
            path = _path_of(match.group(1)) if match and 'rel="next"' in link else None
        return found

    @staticmethod
    def _expect_ok(response: aiohttp.ClientResponse, source: SourceImage, what: str) -> None:
        if response.status == 401 or response.status == 403:
            raise UpstreamError(response.status, f"{source.registry} refused the credentials for "
                                                 f"{source.repository} ({what}): HTTP {response.status}")
        if response.status == 429:
            raise UpstreamError(429, f"{source.registry} kept throttling (429) {what}; try again later")
        if response.status != 200:
            raise UpstreamError(response.status, f"{source.registry} answered HTTP {response.status} for {what}")

    def _request(self, source: SourceImage, method: str, path: str, headers: dict[str, str]) -> _Exchange:
        return _Exchange(self, source, method, path, headers)

    async def _send(self, source: SourceImage, method: str, path: str,
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        """One request with auth, throttling and redirects handled; the caller releases it."""
        key = (source.api_host, source.repository)
        challenged = False
        attempt = 0
        while True:
            authorization = self._authorization.get(key)
            sent = dict(headers)
            if authorization is not None and authorization[1] > time.monotonic():
                sent["Authorization"] = authorization[0]
            response = await self._follow(self._base(source) + path, method, sent, self._base(source))
            # Only the registry's own challenge counts: a CDN it redirected to gets no credentials.
            own = f"{response.url.scheme}://{response.url.host_port_subcomponent}" == self._base(source)
            if response.status == 401 and own and not challenged:
                challenged = True
                header = response.headers.get("WWW-Authenticate", "")
                response.release()
                self._authorization[key] = await self._authorize(source, header)
                continue
            if response.status in (429, 503) and attempt < ATTEMPTS:
                wait = _retry_after(response, attempt)
                response.release()
                attempt += 1
                await asyncio.sleep(wait)
                continue
            return response

    async def _follow(self, url: str, method: str, headers: dict[str, str],
                      registry: str) -> aiohttp.ClientResponse:
        """Follow redirects by hand: credentials go only to `registry` (scheme and host)."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                parts = urlsplit(url)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
            except ValueError:  # a malformed host or port
                valid = False
            if not valid:
                raise UpstreamError(502, f"{registry} led to an address Berth will not use: {url[:200]!r}")
            same = f"{parts.scheme}://{parts.netloc}" == registry
            sent = headers if same else {k: v for k, v in headers.items() if k != "Authorization"}
            try:
                response = await self._session.request(method, url, headers=sent, allow_redirects=False)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                raise UpstreamError(0, f"{parts.netloc} did not answer: {error!r}") from None
            if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                response.release()
                continue
            return response
        raise UpstreamError(502, f"more than {MAX_REDIRECTS} redirects from {registry}")

    async def _authorize(self, source: SourceImage, header: str) -> tuple[str, float]:
        scheme, parameters = _challenge(header)
        if scheme == "basic":
            if self._credentials is None:
                raise UpstreamError(401, f"{source.registry} needs credentials (--username/--password)")
            pair = f"{self._credentials[0]}:{self._credentials[1]}".encode()
            return "Basic " + base64.b64encode(pair).decode(), float("inf")
        if scheme != "bearer" or "realm" not in parameters:
            raise UpstreamError(401, f"{source.registry} asked for authentication Berth does not speak: "
                                     f"{header[:100]!r}")
        query = {"scope": parameters.get("scope") or f"repository:{source.repository}:pull"}
        if "service" in parameters:
            query["service"] = parameters["service"]
        auth = aiohttp.BasicAuth(*self._credentials) if self._credentials else None
        realm = parameters["realm"]
        realm_parts = urlsplit(realm)
        if realm_parts.scheme != "https" and not (realm_parts.scheme == "http" and source.scheme == "http"):
            raise UpstreamError(502, f"{source.registry} names a token service that is not https: {realm[:200]}")
        what = f"the token service of {source.registry}"
        try:
            async with self._session.get(realm, params=query, auth=auth, allow_redirects=False) as response:
                if response.status in (401, 403):
                    raise UpstreamError(401, f"{what} refused the credentials" if self._credentials else
                                        f"{what} wants credentials (--username/--password)")
                if response.status != 200:
                    raise UpstreamError(response.status, f"{what} answered HTTP {response.status}")
                document = _json(await read_capped(response, MAX_TOKEN_RESPONSE, what), what)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise UpstreamError(0, f"{what} did not answer: {error!r}") from None
        if not isinstance(document, dict):
            raise UpstreamError(502, f"{what} sent no token")
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise UpstreamError(502, f"the token service of {source.registry} sent no token")
        lifetime = document.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 60.0
        return f"Bearer {token}", time.monotonic() + max(lifetime - 10, 5)


class _Exchange:
    """`async with client._request(...) as response`: sent on enter, released on exit."""

    def __init__(self, client: UpstreamClient, source: SourceImage, method: str, path: str,
                 headers: dict[str, str]):
        self._args = (source, method, path, headers)
        self._client = client
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._response = await self._client._send(*self._args)
        return self._response

    async def __aexit__(self, *_: object) -> None:
        if self._response is not None:
            self._response.release()


def _path_of(link: str) -> str:
    """A next link's path and query: followed on the registry's own host, wherever it points."""
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _declared_type(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    if isinstance(media_type, str):
        return media_type
    if isinstance(document, dict) and "manifests" in document:
        return OCI_INDEX
    return OCI_MANIFEST if isinstance(document, dict) and "layers" in document else None
