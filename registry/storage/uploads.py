"""Uploads in progress: the session row, the upload's blob and its running hash.

Storage is the only authority for an upload, so any instance can take any step of it:
- the row `u:<id>` says whose upload it is, until when, and which digest algorithm it hashes;
- the blob `data/<id>` says how many bytes have landed (its size) and which version they are
  (its etag), and its metadata carries the running hash state, written in the same Put Block
  List that commits the bytes it covers. Finishing is therefore O(1) in the blob's size.
- every change of the blob is conditional on the etag read before it: of two appends at one
  offset, an append and a finish, or a finish and a cancel, exactly one wins.
- finishing seals the blob (state "sealed" plus the digest, an etag change) before anything
  names it; cancelling replaces the blob by an empty "cancelled" one. Neither can undo the
  other, and nothing ever deletes a sealed blob here.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError

from registry.oci.digest import Digest
from registry.oci.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    RegistryError,
)
from registry.storage.blobs import CONDEMNED, DIGEST, DROPPED, LENGTH, SEALED, STATE, sealed_metadata
from registry.storage.content import (
    MAX_BLOCKS,
    UPLOAD_PREFIX,
    BlobChanged,
    BlobState,
    ContentStore,
    LengthMismatch,
    TooManyBlocks,
)
from registry.storage.hashing import RunningHash, new_hash, restore_hash
from registry.storage.metadata import UPLOAD, MetadataStore, next_key, repository_key

OPEN = "open"
CANCELLED = "cancelled"
HASH_STATE = "hashstate"
HINTS = 512  # uploads remembered per instance (a hint costs a few hundred bytes)


@dataclass(frozen=True)
class UploadSession:
    repository: str
    id: str
    owner: str
    expires: datetime
    algorithm: str  # what the running hash computes (the POST's digest-algorithm)
    offset: int  # bytes committed so far: the blob's size
    blob_etag: str | None  # None until the first bytes (or the seal) are committed
    hash_state: str | None  # the running hash after `offset` bytes, if it could be saved
    sealed_digest: str | None = None  # set once finished
    hinted: bool = False  # from this instance's memory, not read from storage: see UploadStore.hint
    has_row: bool = True  # False for a one-request (monolithic) upload

    @property
    def location(self) -> str:
        return UPLOAD_PREFIX + self.id


def _now() -> datetime:
    return datetime.now(UTC)


def _unknown() -> RegistryError:
    return RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown, finished, cancelled or expired")


def check_digest(actual: Digest, expected: Digest) -> None:
    if actual != expected:
        raise RegistryError(
            DIGEST_INVALID,
            f"uploaded content has digest {actual}, not {expected}",
            {"expected": str(expected), "actual": str(actual)},
        )


class UploadStore:
    def __init__(self, content: ContentStore, metadata: MetadataStore, ttl_seconds: int):
        self._content = content
        self._metadata = metadata
        self._ttl = timedelta(seconds=ttl_seconds)
        self._hints: OrderedDict[str, UploadSession] = OrderedDict()

    def hint(self, repository: str, upload_id: str, owner: str) -> UploadSession | None:
        """The upload as this instance last started or committed it, if it did.

        Hints save round trips on the instance that took the previous request, and decide
        nothing: `open` takes only the session row's facts from a hint (owner, repository,
        expiry, algorithm: they never change) and still reads the blob; a body-less closing
        PUT takes the rest too, but its seal is conditional on the hinted etag, so storage
        arbitrates, and a digest that does not match the hinted hash, or a seal that loses,
        reads storage again. Hashing new bytes always starts from the state storage has.
        """
        session = self._hints.get(upload_id)
        if session is None or session.repository != repository or session.owner != owner:
            return None
        if session.expires < _now():
            return None
        return replace(session, hinted=True)

    def _remember(self, session: UploadSession) -> None:
        self._hints[session.id] = session
        self._hints.move_to_end(session.id)
        while len(self._hints) > HINTS:
            self._hints.popitem(last=False)

    async def start(self, repository: str, owner: str, algorithm: str = "sha256") -> UploadSession:
        upload_id = secrets.token_urlsafe(24)
        expires = _now() + self._ttl
        entity = {
            "PartitionKey": repository_key(repository),
            "RowKey": UPLOAD + upload_id,
            "location": UPLOAD_PREFIX + upload_id,
            "owner": owner,
            "expires": expires,
            "algorithm": algorithm,
        }
        try:
            await self._metadata.repos.create_entity(entity)
        except ResourceExistsError:
            pass  # the SDK retried a create whose first answer was lost: the row is ours
        session = UploadSession(repository, upload_id, owner, expires, algorithm, 0, None, None)
        self._remember(session)
        return session

    def fresh(self, repository: str, owner: str, algorithm: str) -> UploadSession:
        """A session for a one-request (monolithic) upload: no row, as nothing outlives it."""
        upload_id = secrets.token_urlsafe(24)
        return UploadSession(repository, upload_id, owner, _now() + self._ttl, algorithm, 0, None, None,
                             has_row=False)

    async def open(self, repository: str, upload_id: str, owner: str, finished_ok: bool = False) -> UploadSession:
        """The session as storage has it, if it is `owner`'s and open (or, with `finished_ok`,
        sealed); anyone else cannot even learn that it exists."""
        known = self.hint(repository, upload_id, owner)
        if known is not None:  # the row's facts never change: only the blob needs reading
            blob = await self._content.stat(UPLOAD_PREFIX + upload_id)
            session = replace(known, offset=0, blob_etag=None, hash_state=None, sealed_digest=None, hinted=False)
        else:
            row, blob = await asyncio.gather(
                self._metadata.read_fast(self._metadata.repos, repository_key(repository), UPLOAD + upload_id),
                self._content.stat(UPLOAD_PREFIX + upload_id),
            )
            if row is None or row.get("owner") != owner:
                raise _unknown()
            expires = datetime.fromisoformat(row["expires"])  # the fast read leaves dates as ISO text
            if expires < _now():
                raise _unknown()
            session = UploadSession(repository, upload_id, owner, expires, row.get("algorithm") or "sha256",
                                    0, None, None)
        if blob is None:
            return session
        state = blob.metadata.get(STATE, OPEN)
        if state == CONDEMNED:  # finished content the garbage collector may take: still finished
            state = SEALED
        if state == CANCELLED or (state in (SEALED, DROPPED) and not finished_ok):
            raise _unknown()
        if state == DROPPED:  # finished, and its bytes dropped for an identical indexed copy
            return replace(session, offset=int(blob.metadata[LENGTH]), blob_etag=blob.etag,
                           sealed_digest=blob.metadata[DIGEST])
        return replace(session, offset=blob.size, blob_etag=blob.etag, hash_state=blob.metadata.get(HASH_STATE),
                       sealed_digest=blob.metadata.get(DIGEST) if state == SEALED else None)

    def _running_hash(self, session: UploadSession) -> RunningHash | None:
        if session.offset == 0:
            return new_hash(session.algorithm)
        return restore_hash(session.hash_state)

    async def append(
        self,
        session: UploadSession,
        chunks: AsyncIterator[bytes],
        expected_length: int | None = None,
        finishing: Digest | None = None,
    ) -> UploadSession:
        """Append a stream to the upload; all of it lands or none of it does.

        With `finishing` (the closing PUT's digest) and a running hash of that algorithm, the
        digest is checked before the commit: a mismatch commits nothing, a match seals in the
        same call. Otherwise the new hash state is committed with the bytes.
        """
        return await self._append(session.id, _resolved(session), chunks, expected_length, finishing, None, True)

    async def open_and_append(
        self,
        repository: str,
        upload_id: str,
        owner: str,
        chunks: AsyncIterator[bytes],
        expected_length: int | None = None,
        check: Callable[[UploadSession], None] | None = None,
    ) -> UploadSession:
        """`open` and `append` in one: the session is read while the first blocks stage.

        Staging needs only the blob's name, so a PATCH costs no extra round trip for reading
        the session; nothing is committed before the session was read and `check`ed (the
        Content-Range), and a request that fails either stops at once.
        """
        # Blocks are staged before the session is read only where this instance started the
        # upload for this caller; anyone else's bytes wait until the session says they may land.
        trusted = self.hint(repository, upload_id, owner) is not None
        opening = self.open(repository, upload_id, owner)
        return await self._append(upload_id, opening, chunks, expected_length, None, check, trusted)

    async def _append(
        self,
        upload_id: str,
        opening: Awaitable[UploadSession],
        chunks: AsyncIterator[bytes],
        expected_length: int | None,
        finishing: Digest | None,
        check: Callable[[UploadSession], None] | None,
        trusted: bool,
    ) -> UploadSession:
        stream = _HashingStream(chunks, self._content.block_size, gated=not trusted)
        decided: dict[str, Any] = {}

        async def base() -> str | None:
            session = await opening
            if check is not None:
                check(session)
            hasher = self._running_hash(session)
            sealing = finishing is not None and hasher is not None and hasher.algorithm == finishing.algorithm
            stream.adopt(hasher)
            decided.update(session=session, hasher=hasher, sealing=sealing)
            return session.blob_etag

        def metadata() -> tuple[dict[str, str], bool]:
            hasher, sealing = decided["hasher"], decided["sealing"]
            if sealing:
                assert finishing is not None
                check_digest(Digest(hasher.algorithm, hasher.hexdigest()), finishing)
                return sealed_metadata(finishing), True
            state = hasher.state() if hasher is not None else None
            return ({STATE: OPEN, HASH_STATE: state} if state else {STATE: OPEN}), False

        stream.ready = asyncio.ensure_future(base())
        try:
            etag, appended = await self._content.append(
                UPLOAD_PREFIX + upload_id, stream, stream.ready, metadata, expected_length=expected_length,
            )
        except BlobChanged:
            self._hints.pop(upload_id, None)
            raise RegistryError(RANGE_INVALID, "another request changed this upload first") from None
        except LengthMismatch as error:
            raise RegistryError(SIZE_INVALID, f"chunk length mismatch: {error}") from None
        except TooManyBlocks:
            raise RegistryError(BLOB_UPLOAD_INVALID, f"the upload has too many chunks (storage keeps at most "
                                f"{MAX_BLOCKS} per blob); push it again in larger chunks") from None
        session, hasher, sealing = decided["session"], decided["hasher"], decided["sealing"]
        state = hasher.state() if hasher is not None and not sealing else None
        appended_to = replace(session, offset=session.offset + appended, blob_etag=etag, hash_state=state,
                              sealed_digest=str(finishing) if sealing else None)
        if state is not None:
            self._remember(appended_to)
        else:
            self._hints.pop(upload_id, None)
        return appended_to

    async def seal(self, session: UploadSession, digest: Digest,
                   verified: Callable[[UploadSession], None] | None = None) -> BlobState:
        """Verify the upload against the client's digest and seal it; the sealed blob's state.

        `verified` is told the session once its bytes are known to have that digest, before the
        seal is written (so the caller may start work that needs a verified digest). Sealing an
        upload already sealed with this digest (a retried or concurrent finish) is not an error:
        whoever sealed it, the bytes were verified.
        """
        for _ in range(3):
            if session.sealed_digest is not None:
                if session.sealed_digest != str(digest):
                    raise RegistryError(DIGEST_INVALID, f"the upload was finished as {session.sealed_digest}")
                return BlobState(session.offset, session.blob_etag or "", sealed_metadata(digest))
            actual = await self._digest(session, digest.algorithm)
            if actual != digest and session.hinted:
                session = await self.open(session.repository, session.id, session.owner, finished_ok=True)
                continue  # the hint may be behind storage: only storage may refuse the digest
            check_digest(actual, digest)
            if verified is not None:
                verified(session)
            self._hints.pop(session.id, None)
            try:
                etag = await self._content.set_metadata(session.location, sealed_metadata(digest), session.blob_etag)
            except BlobChanged:
                session = await self.open(session.repository, session.id, session.owner, finished_ok=True)
                continue
            return BlobState(session.offset, etag, sealed_metadata(digest))
        raise RegistryError(RANGE_INVALID, "the upload changed while it was being finished")

    async def _digest(self, session: UploadSession, algorithm: str) -> Digest:
        hasher = self._running_hash(session)
        if hasher is not None and hasher.algorithm == algorithm:
            return Digest(algorithm, hasher.hexdigest())
        # No running hash of this algorithm (the POST named another one, or the state could
        # not be saved): hash what is stored, pinned to the version that was read.
        hasher = new_hash(algorithm)
        if session.offset and session.blob_etag is not None:
            try:
                async for chunk in self._content.read(session.location, session.blob_etag):
                    hasher.update(chunk)
            except BlobChanged:
                raise RegistryError(RANGE_INVALID, "the upload changed while it was being finished") from None
        return Digest(algorithm, hasher.hexdigest())

    async def cancel(self, session: UploadSession) -> None:
        """Free the upload's bytes; refused (as unknown) once it is finished.

        The blob becomes an empty "cancelled" one rather than going away, so an append that
        read the session before the cancel cannot re-create it; the expiry purge removes it.
        """
        self._hints.pop(session.id, None)
        try:
            await self._content.truncate(session.location, {STATE: CANCELLED}, session.blob_etag)
        except BlobChanged:
            raise _unknown() from None

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete upload sessions past their expiry, with their unfinished bytes; returns how many.

        A scan over all repositories: meant for a periodic job, not a request path.
        """
        cutoff = now or _now()
        query = "RowKey gt @low and RowKey lt @high and expires lt @cutoff"
        params = {"low": UPLOAD, "high": next_key(UPLOAD), "cutoff": cutoff}
        purged = 0
        columns = ["PartitionKey", "RowKey", "location"]
        async for row in self._metadata.repos.query_entities(query, parameters=params, select=columns):
            blob = await self._content.stat(row["location"])
            # Sealed or condemned: finished content, the garbage collector's to judge.
            if blob is not None and blob.metadata.get(STATE) not in (SEALED, CONDEMNED):
                await self._content.delete(row["location"], blob.etag)
            await self._metadata.repos.delete_entity(row["PartitionKey"], row["RowKey"])
            purged += 1
        return purged


async def _resolved(session: UploadSession) -> UploadSession:
    return session


class _HashingStream:
    """Feeds each chunk to the running hash on its way to storage.

    The hash can only start once the upload's state is read (`adopt`); chunks that arrive
    before that wait here, at most `limit` bytes of them (none when `gated`), and a failed read
    (`ready`) stops the stream at the next chunk.
    """

    def __init__(self, chunks: AsyncIterator[bytes], limit: int, gated: bool):
        self._chunks = chunks
        self._limit = limit
        self._gated = gated  # pass nothing on (to staging) before the session is read
        self._hasher: RunningHash | None = None
        self._adopted = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.ready: asyncio.Future[Any] | None = None

    def adopt(self, hasher: RunningHash | None) -> None:
        self._hasher, self._adopted = hasher, True
        if hasher is not None:
            for chunk in self._pending:
                hasher.update(chunk)
        self._pending.clear()

    def __aiter__(self) -> _HashingStream:
        return self

    async def __anext__(self) -> bytes:
        if not self._adopted and self.ready is not None and self.ready.done():
            self.ready.result()  # raises what the session read or check raised
        chunk = await self._chunks.__anext__()
        if self._adopted:
            if self._hasher is not None:
                self._hasher.update(chunk)
        else:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if (self._gated or self._pending_bytes > self._limit) and self.ready is not None:
                await self.ready
        return chunk
