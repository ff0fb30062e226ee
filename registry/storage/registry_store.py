"""The registry's model: repositories, blob links, uploads, manifests, tags and referrers.

The API layer asks this module for data; it alone knows how that data sits in Blob and
Table Storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    RANGE_INVALID,
    SIZE_INVALID,
    RegistryError,
)
from registry.oci.manifest import Manifest, effective_artifact_type
from registry.settings import Settings
from registry.storage.clients import StorageClients
from registry.storage.content import MANIFEST_PREFIX, UPLOAD_PREFIX, ConcurrentAppend, ContentStore, LengthMismatch
from registry.storage.metadata import (
    BLOB,
    CATALOG_PARTITION,
    MANIFEST,
    REFERRER,
    TAG,
    UPLOAD,
    MetadataStore,
    int64,
    next_key,
    read_int,
    repository_key,
    repository_name,
)

# Table properties hold at most 64 KiB; manifests up to this size live in the row itself,
# so a pull by tag or digest is a single point read.
INLINE_MANIFEST_LIMIT = 60 * 1024
# Uploads in progress remembered per instance; a miss only costs a read (and a re-hash).
LOCAL_UPLOADS = 512


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    location: str


@dataclass(frozen=True)
class UploadSession:
    repository: str
    id: str
    offset: int
    location: str
    blob_etag: str | None  # None until the first bytes are committed
    expires: datetime
    owner: str
    sealed: bool = False  # finished content: verified and closed to further appends


@dataclass(frozen=True)
class StoredManifest:
    digest: Digest
    media_type: str
    size: int
    subject: str | None
    body: bytes | None  # None when asked for metadata only


def _now() -> datetime:
    return datetime.now(UTC)


class RegistryStore:
    def __init__(self, clients: StorageClients, settings: Settings):
        self._settings = settings
        self.content = ContentStore(
            clients.blob_service, settings.blob_container, settings.block_size, settings.blocks_in_flight,
            clients.session,
        )
        self.metadata = MetadataStore(clients.table_service, settings.table_prefix, clients.table_reader)
        # Uploads this instance is serving: the session as last written, and its hash state.
        self._uploads: OrderedDict[str, tuple[UploadSession, Any]] = OrderedDict()
        self._known_repositories: set[str] = set()

    async def initialize(self) -> None:
        await self.content.ensure_container()
        await self.metadata.ensure_tables()

    # --- blobs -------------------------------------------------------------------------

    async def stat_blob(self, repository: str, digest: Digest) -> BlobInfo:
        row = await self.metadata.read_fast(self.metadata.repos, repository_key(repository), BLOB + str(digest))
        if row is None:
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {repository}")
        return BlobInfo(digest, read_int(row, "size"), row["location"])

    def read_blob(self, blob: BlobInfo, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.content.stream(blob.location, self._settings.sas_ttl_seconds, offset, length)

    async def blob_url(self, blob: BlobInfo) -> str:
        return await self.content.read_url(blob.location, self._settings.sas_ttl_seconds)

    async def delete_blob(self, repository: str, digest: Digest) -> None:
        """Unlink the blob from the repository; its bytes stay while other links may need them."""
        if not await self.metadata.delete(self.metadata.repos, repository_key(repository), BLOB + str(digest)):
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {repository}")

    async def mount_blob(self, repository: str, digest: Digest, source: str) -> BlobInfo | None:
        """Link a blob that `source` already has into `repository`; None if it has none."""
        try:
            blob = await self.stat_blob(source, digest)
        except RegistryError:
            return None
        await self._link(repository, blob)
        return blob

    async def _link(self, repository: str, blob: BlobInfo) -> None:
        await self.metadata.repos.upsert_entity(self._link_entity(repository, blob))

    @staticmethod
    def _link_entity(repository: str, blob: BlobInfo) -> dict[str, Any]:
        return {
            "PartitionKey": repository_key(repository),
            "RowKey": BLOB + str(blob.digest),
            "size": int64(blob.size),
            "location": blob.location,
        }

    # --- uploads -----------------------------------------------------------------------

    async def start_upload(self, repository: str, owner: str) -> UploadSession:
        upload_id = secrets.token_urlsafe(24)
        expires = _now() + timedelta(seconds=self._settings.upload_ttl_seconds)
        # The row says who may use the upload and until when; the blob itself is the truth
        # about its bytes (size, etag), so appends need not rewrite the row.
        entity = {
            "PartitionKey": repository_key(repository),
            "RowKey": UPLOAD + upload_id,
            "location": UPLOAD_PREFIX + upload_id,
            "owner": owner,
            "expires": expires,
        }
        await self.metadata.repos.create_entity(entity)
        session = UploadSession(repository, upload_id, 0, entity["location"], None, expires, owner)
        self._remember(session, hashlib.sha256())
        return session

    async def get_upload(self, repository: str, upload_id: str, owner: str) -> UploadSession:
        """The session, if it is `owner`'s; another caller cannot even learn that it exists.

        The copy this instance last wrote is used without a read: every write that follows is
        conditional on the blob's etag (and finishing seals the blob, changing it), so a stale
        copy fails safely instead of doing harm. Elsewhere the row says who and until when, and
        the blob itself says how many bytes have landed.
        """
        local = self._uploads.get(upload_id)
        if local is not None:
            session = local[0]
            if session.repository == repository and session.owner == owner and session.expires > _now():
                return session
        row, blob = await asyncio.gather(
            self.metadata.get(self.metadata.repos, repository_key(repository), UPLOAD + upload_id),
            self.content.stat(UPLOAD_PREFIX + upload_id),
        )
        if row is None or row["expires"] < _now() or row.get("owner") != owner or (blob and blob[2]):
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown, finished, cancelled or expired")
        size, etag = (blob[0], blob[1]) if blob else (0, None)
        return UploadSession(repository, upload_id, size, row["location"], etag, row["expires"], owner)

    async def append_upload(
        self,
        session: UploadSession,
        chunks: AsyncIterator[bytes],
        expected_length: int | None = None,
        finishing: Digest | None = None,
    ) -> UploadSession:
        """Append a stream to the upload; all of it lands or none of it does.

        With `finishing` (the closing PUT's digest) and this instance's hash state, the digest
        is checked before the commit: a mismatch commits nothing, a match seals in the same call.
        """
        local = self._uploads.get(session.id)
        if local is not None and local[0].offset == session.offset and local[1] is not None:
            hasher = local[1].copy()  # a copy, so a failed append leaves the state as it was
        else:
            hasher = hashlib.sha256() if session.offset == 0 else None

        def seal_if() -> bool:
            if finishing is None or hasher is None or finishing.algorithm != "sha256":
                return False
            _check_digest(Digest("sha256", hasher.hexdigest()), finishing)
            return True

        try:
            blob_etag, appended, sealed = await self.content.append(
                session.location, _HashingStream(chunks, hasher), session.blob_etag,
                expected_length=expected_length, seal_if=seal_if,
            )
        except ConcurrentAppend:
            self._uploads.pop(session.id, None)
            raise RegistryError(RANGE_INVALID, "another request changed this upload first") from None
        except LengthMismatch as error:
            raise RegistryError(SIZE_INVALID, f"chunk length mismatch: {error}") from None
        updated = replace(session, offset=session.offset + appended, blob_etag=blob_etag, sealed=sealed)
        self._remember(updated, hasher)
        return updated

    async def finish_upload(self, session: UploadSession, digest: Digest) -> BlobInfo:
        """Verify the content against the client's digest and make it a blob of the repository."""
        for attempt in range(2):
            if session.sealed:
                break
            _check_digest(await self._upload_digest(session, digest.algorithm), digest)
            try:
                # Sealing changes the blob's etag, so no append that is still in flight can
                # alter the bytes we just verified.
                await self.content.seal(session.location, session.blob_etag)
                break
            except ConcurrentAppend:
                self._uploads.pop(session.id, None)
                if attempt:
                    raise RegistryError(RANGE_INVALID, "the upload changed while it was being finished") from None
                session = await self.get_upload(session.repository, session.id, session.owner)
        blob = BlobInfo(digest, session.offset, session.location)
        index_entity = {
            "PartitionKey": str(digest),
            "RowKey": "",
            "size": int64(blob.size),
            "location": blob.location,
            "created": _now(),
        }
        # Three independent writes in one round trip. They need not be atomic: the blob is
        # sealed, and the expiry purge never deletes a sealed blob, only a leftover row.
        indexed, _, _ = await asyncio.gather(
            self._create_index(index_entity),
            self._link(session.repository, blob),
            self.metadata.repos.delete_entity(repository_key(session.repository), UPLOAD + session.id),
        )
        if not indexed:
            # Same bytes were already stored: link those, then drop this copy.
            existing = await self.metadata.get(self.metadata.digests, str(digest), "")
            if existing is not None and existing["location"] != blob.location:
                blob = BlobInfo(digest, read_int(existing, "size"), existing["location"])
                await self._link(session.repository, blob)
                await self.content.delete(session.location)
        self._uploads.pop(session.id, None)
        return blob

    async def _create_index(self, entity: dict[str, Any]) -> bool:
        try:
            await self.metadata.digests.create_entity(entity)
        except ResourceExistsError:
            return False
        return True

    async def _upload_digest(self, session: UploadSession, algorithm: str) -> Digest:
        local = self._uploads.get(session.id)
        if (algorithm == "sha256" and local is not None and local[1] is not None
                and local[0].offset == session.offset and local[0].blob_etag == session.blob_etag):
            return Digest(algorithm, local[1].hexdigest())
        # The hash state lives on another instance (or was evicted): hash what was stored.
        hasher = hashlib.new(algorithm)
        if session.blob_etag is not None:
            async for chunk in self.content.read(session.location, etag=session.blob_etag):
                hasher.update(chunk)
        return Digest(algorithm, hasher.hexdigest())

    async def cancel_upload(self, session: UploadSession) -> None:
        self._uploads.pop(session.id, None)
        await self.content.delete(session.location)
        await self.metadata.repos.delete_entity(repository_key(session.repository), UPLOAD + session.id)

    def _remember(self, session: UploadSession, hasher: Any) -> None:
        self._uploads[session.id] = (session, hasher)
        self._uploads.move_to_end(session.id)
        while len(self._uploads) > LOCAL_UPLOADS:
            self._uploads.popitem(last=False)

    async def purge_expired_uploads(self, now: datetime | None = None) -> int:
        """Delete upload sessions past their expiry, with their bytes; returns how many.

        A scan over all repositories: meant for a periodic job, not a request path.
        """
        cutoff = now or _now()
        query = "RowKey gt @low and RowKey lt @high and expires lt @cutoff"
        params = {"low": UPLOAD, "high": next_key(UPLOAD), "cutoff": cutoff}
        purged = 0
        columns = ["PartitionKey", "RowKey", "location"]
        async for row in self.metadata.repos.query_entities(query, parameters=params, select=columns):
            blob = await self.content.stat(row["location"])
            if blob is not None and not blob[2]:  # a sealed blob is finished content: keep it
                await self.content.delete(row["location"])
            await self.metadata.repos.delete_entity(row["PartitionKey"], row["RowKey"])
            purged += 1
        return purged


    # --- manifests ---------------------------------------------------------------------

    async def put_manifest(
        self, repository: str, digest: Digest, body: bytes, manifest: Manifest, tag: str | None
    ) -> None:
        await self._check_references(repository, manifest)
        partition = repository_key(repository)
        stored: dict[str, Any] = {"mediaType": manifest.media_type, "size": int64(len(body))}
        if len(body) <= INLINE_MANIFEST_LIMIT:
            stored["data"] = body
        else:
            stored["location"] = f"{MANIFEST_PREFIX}{digest.algorithm}/{digest.hex}"
            await self.content.put(stored["location"], body)
        artifact_type = effective_artifact_type(manifest)
        row = {"PartitionKey": partition, "RowKey": MANIFEST + str(digest), **stored, "created": _now()}
        if manifest.subject is not None:
            row["subject"] = str(manifest.subject.digest)
        operations: list[tuple[str, dict[str, Any]]] = [("upsert", row)]
        if tag is not None:
            operations.append(
                ("upsert", {"PartitionKey": partition, "RowKey": TAG + tag, "digest": str(digest), **stored})
            )
        if manifest.subject is not None:
            referrer: dict[str, Any] = {
                "PartitionKey": partition,
                "RowKey": f"{REFERRER}{manifest.subject.digest}:{digest}",
                "mediaType": manifest.media_type,
                "size": int64(len(body)),
            }
            if artifact_type:
                referrer["artifactType"] = artifact_type
            if manifest.annotations:
                referrer["annotations"] = json.dumps(manifest.annotations)
            operations.append(("upsert", referrer))
        await self.metadata.transact(self.metadata.repos, operations)
        await self._register_repository(repository)

    async def _check_references(self, repository: str, manifest: Manifest) -> None:
        async def blob_problem(descriptor: Any) -> str | None:
            try:
                blob = await self.stat_blob(repository, descriptor.digest)
            except RegistryError:
                return f"blob {descriptor.digest} is not in repository {repository}"
            if blob.size != descriptor.size:
                raise RegistryError(
                    MANIFEST_INVALID,
                    f"descriptor of {descriptor.digest} says {descriptor.size} bytes; the blob has {blob.size}",
                )
            return None

        async def child_problem(descriptor: Any) -> str | None:
            row = await self.metadata.get(
                self.metadata.repos, repository_key(repository), MANIFEST + str(descriptor.digest)
            )
            if row is None:
                return f"manifest {descriptor.digest} is not in repository {repository}"
            return None

        checks = [blob_problem(d) for d in manifest.blobs] + [child_problem(d) for d in manifest.children]
        problems = [p for p in await asyncio.gather(*checks) if p]
        if problems:
            raise RegistryError(MANIFEST_BLOB_UNKNOWN, problems[0], {"missing": problems})

    async def _register_repository(self, repository: str) -> None:
        if repository in self._known_repositories:
            return
        await self.metadata.catalog.upsert_entity(
            {"PartitionKey": CATALOG_PARTITION, "RowKey": repository_key(repository)}
        )
        self._known_repositories.add(repository)

    async def get_manifest(self, repository: str, reference: Digest | str, with_body: bool = True) -> StoredManifest:
        row_key = MANIFEST + str(reference) if isinstance(reference, Digest) else TAG + reference
        row = await self.metadata.read_fast(self.metadata.repos, repository_key(repository), row_key)
        if row is None:
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest {reference} is not in repository {repository}")
        digest = reference if isinstance(reference, Digest) else parse_digest(row["digest"])
        body: bytes | None = None
        if with_body:
            body = row["data"] if "data" in row else await self.content.read_all(row["location"])
        return StoredManifest(digest, row["mediaType"], read_int(row, "size"), row.get("subject"), body)

    async def delete_manifest(self, repository: str, digest: Digest) -> None:
        """Delete a manifest and every tag that points at it."""
        partition = repository_key(repository)
        row = await self.metadata.get(self.metadata.repos, partition, MANIFEST + str(digest))
        if row is None:
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest {digest} is not in repository {repository}")
        operations = [
            ("delete", {"PartitionKey": partition, "RowKey": tag["RowKey"]})
            async for tag in self.metadata.scan(
                self.metadata.repos, partition, TAG, extra_filter=" and digest eq @digest",
                parameters={"digest": str(digest)},
            )
        ]
        if row.get("subject"):
            referrer_key = f"{REFERRER}{row['subject']}:{digest}"
            operations.append(("delete", {"PartitionKey": partition, "RowKey": referrer_key}))
        operations.append(("delete", {"PartitionKey": partition, "RowKey": MANIFEST + str(digest)}))
        await self.metadata.transact(self.metadata.repos, operations)

    async def delete_tag(self, repository: str, tag: str) -> None:
        if not await self.metadata.delete(self.metadata.repos, repository_key(repository), TAG + tag):
            raise RegistryError(MANIFEST_UNKNOWN, f"tag {tag} is not in repository {repository}")

    # --- listings ----------------------------------------------------------------------

    async def list_tags(self, repository: str, limit: int, last: str | None) -> tuple[list[str], bool]:
        """Up to `limit` tags after `last` in lexical order, and whether more follow."""
        partition = repository_key(repository)
        rows = [
            row["RowKey"][len(TAG):]
            async for row in self.metadata.scan(self.metadata.repos, partition, TAG, last, limit + 1)
        ]
        if not rows and last is None and not await self._repository_exists(repository):
            raise RegistryError(NAME_UNKNOWN, f"repository {repository} is not known to this registry")
        return rows[:limit], len(rows) > limit

    async def _repository_exists(self, repository: str) -> bool:
        row = await self.metadata.get(self.metadata.catalog, CATALOG_PARTITION, repository_key(repository))
        return row is not None

    async def list_repositories(self, limit: int, last: str | None) -> tuple[list[str], bool]:
        after = repository_key(last) if last else None
        rows = [
            repository_name(row["RowKey"])
            async for row in self.metadata.scan(self.metadata.catalog, CATALOG_PARTITION, "", after, limit + 1)
        ]
        return rows[:limit], len(rows) > limit

    async def list_referrers(self, repository: str, subject: Digest, artifact_type: str | None) -> list[dict[str, Any]]:
        prefix = f"{REFERRER}{subject}:"
        descriptors = []
        async for row in self.metadata.scan(self.metadata.repos, repository_key(repository), prefix):
            descriptor: dict[str, Any] = {
                "mediaType": row["mediaType"],
                "digest": row["RowKey"][len(prefix):],
                "size": read_int(row, "size"),
            }
            if row.get("artifactType"):
                descriptor["artifactType"] = row["artifactType"]
            if row.get("annotations"):
                descriptor["annotations"] = json.loads(row["annotations"])
            if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                descriptors.append(descriptor)
        return descriptors


def _check_digest(actual: Digest, expected: Digest) -> None:
    if actual != expected:
        raise RegistryError(
            DIGEST_INVALID,
            f"uploaded content has digest {actual}, not {expected}",
            {"expected": str(expected), "actual": str(actual)},
        )


class _HashingStream:
    """Feeds each chunk to the hasher (when we have one) on its way to storage."""

    def __init__(self, chunks: AsyncIterator[bytes], hasher: Any):
        self._chunks = chunks
        self._hasher = hasher

    def __aiter__(self) -> _HashingStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        if self._hasher is not None:
            self._hasher.update(chunk)
        return chunk

