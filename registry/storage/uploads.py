"""Uploads in progress: the signed state in their Location, their blob and its running hash.

Storage is the only authority for an upload's bytes, so any instance can take any step of it:
- the state the client carries (upload_state.py) says whose upload it is, until when, which
  digest algorithm it hashes, how many bytes it has, the blob version they were committed as,
  the running hash over them, and blocks staged but not yet committed (a small upload's bytes
  wait there for the closing PUT, which commits and seals them in one write);
- the blob `data/<id>` holds what was committed: its size and version (etag), and metadata
  with the running hash, written in the same Put Block List as the bytes it covers, so a
  client that lost its latest Location can resume from what storage has;
- every commit is conditional on the version the state names: of two appends at one offset,
  an append and a finish, or a finish and a cancel, exactly one wins; the loser learns the
  upload's state from storage.
- finishing seals the blob (state "sealed" plus the digest) before anything names it;
  cancelling replaces it by an empty "cancelled" one. Neither can undo the other, and nothing
  ever deletes a sealed blob here.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

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
from registry.storage.metadata import UPLOAD, MetadataStore, next_key
from registry.storage.upload_state import UploadStateCodec

OPEN = "open"
CANCELLED = "cancelled"
HASH_STATE = "hashstate"
# Blocks a session may carry staged but uncommitted: a PATCH within this (32 MiB at the
# default block size) costs one storage write, its commit riding on the closing PUT's seal.
MAX_PENDING = 4
# Expiry is judged on each instance's clock and the purge on storage's: an hour apart is plenty.
PURGE_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class UploadSession:
    repository: str
    id: str
    owner: str
    expires: datetime
    algorithm: str  # what the running hash computes (the POST's digest-algorithm)
    offset: int  # bytes received so far: committed ones plus `pending` ones
    blob_etag: str | None  # the committed version; None while nothing is committed
    hash_state: str | None  # the running hash after `offset` bytes, if it could be saved
    pending: tuple[str, ...] = ()  # staged blocks the next commit appends, in order
    sealed_digest: str | None = None  # set once finished
    resumable: bool = True  # False for a one-request (monolithic) upload: no Location
    token: str = ""  # the signed state, as the Location carries it

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
        self._codec = UploadStateCodec(metadata.catalog)

    def _signed(self, session: UploadSession) -> UploadSession:
        """The session with its state signed. Only an open upload's: a signed state names the
        version its commits are conditional on, and none may ever name a finished blob's (a
        cancel or append If-Match that version would then change verified bytes)."""
        if not session.resumable or session.sealed_digest is not None:
            return replace(session, token="")
        fields: dict[str, Any] = {
            "r": session.repository, "i": session.id, "o": session.owner,
            "x": int(session.expires.timestamp()), "a": session.algorithm, "n": session.offset,
        }
        if session.blob_etag is not None:
            fields["e"] = session.blob_etag
        if session.hash_state is not None:
            fields["h"] = session.hash_state
        if session.pending:
            fields["p"] = list(session.pending)
        return replace(session, token=self._codec.encode(fields))

    async def start(self, repository: str, owner: str, algorithm: str = "sha256") -> UploadSession:
        """A new upload: nothing is written until its first bytes."""
        await self._codec.ready()
        expires = datetime.fromtimestamp(int((_now() + self._ttl).timestamp()), UTC)
        return self._signed(UploadSession(repository, secrets.token_urlsafe(24), owner, expires, algorithm,
                                          0, None, None))

    def fresh(self, repository: str, owner: str, algorithm: str) -> UploadSession:
        """A session for a one-request (monolithic) upload: nothing outlives the request."""
        return UploadSession(repository, secrets.token_urlsafe(24), owner, _now() + self._ttl, algorithm, 0,
                             None, None, resumable=False)

    async def resume(self, repository: str, upload_id: str, owner: str, token: str | None) -> UploadSession:
        """The session as the client's Location states it, if that is a state this registry
        issued for `owner`'s unexpired upload `upload_id` in `repository`; anyone else cannot
        even learn that the upload exists. Reads nothing: storage judges the state when it is
        committed (and `current` asks storage where the upload stands)."""
        await self._codec.ready()
        fields = self._codec.decode(token) if token else None
        if (fields is None or fields.get("r") != repository or fields.get("i") != upload_id
                or fields.get("o") != owner):
            raise _unknown()
        expires = datetime.fromtimestamp(fields["x"], UTC)
        if expires < _now():
            raise _unknown()
        return UploadSession(repository, upload_id, owner, expires, fields["a"], fields["n"], fields.get("e"),
                             fields.get("h"), tuple(fields.get("p", ())), token=token or "")

    async def current(self, session: UploadSession, finished_ok: bool = False) -> UploadSession:
        """Where the upload stands in storage: the state itself while storage still has the
        version it names, else what storage has (a client that lost a response, or another
        request that got there first). Unknown once cancelled, or (unless `finished_ok`)
        finished."""
        blob = await self._content.stat(session.location)
        if blob is None:
            if session.blob_etag is None:
                return session  # nothing committed yet: the state is all there is
            raise _unknown()  # committed once and gone since: expired and purged
        if blob.etag == session.blob_etag:
            return session
        state = blob.metadata.get(STATE, OPEN)
        if state == CONDEMNED:  # finished content the garbage collector may take: still finished
            state = SEALED
        if state == CANCELLED or (state in (SEALED, DROPPED) and not finished_ok):
            raise _unknown()
        if state == DROPPED:  # finished, and its bytes dropped for an identical indexed copy
            return replace(session, offset=int(blob.metadata[LENGTH]), blob_etag=blob.etag, hash_state=None,
                           pending=(), sealed_digest=blob.metadata[DIGEST], token="")
        if state == SEALED:
            return replace(session, offset=blob.size, blob_etag=blob.etag, hash_state=None, pending=(),
                           sealed_digest=blob.metadata.get(DIGEST), token="")
        if state != OPEN:
            raise _unknown()  # no state of ours: never sign a version we cannot vouch for
        stored = replace(session, offset=blob.size, blob_etag=blob.etag, hash_state=blob.metadata.get(HASH_STATE),
                         pending=())
        return self._signed(stored)

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
        same write. Otherwise the bytes stay staged in the returned state while it carries at
        most MAX_PENDING blocks, and are committed (with the running hash) beyond that.
        """
        hasher = self._running_hash(session)
        committed = probe = None
        if session.blob_etag is not None:  # read while the new blocks stage
            committed = asyncio.ensure_future(self._content.committed_blocks(session.location))
        room = (MAX_PENDING - len(session.pending)) * self._content.block_size
        if finishing is None and session.resumable and (expected_length is None or expected_length <= room):
            # The bytes may stay staged (see below): then the blob's version is checked meanwhile.
            probe = asyncio.ensure_future(self._content.stat(session.location))
        def stale() -> bool:  # the probe says another request got there first: stop staging
            if probe is None or not probe.done() or probe.exception() is not None:
                return False
            blob = probe.result()
            return (blob.etag if blob is not None else None) != session.blob_etag

        try:
            staged, appended = await self._content.stage(session.location, _hashed(chunks, hasher, stale),
                                                         expected_length)
            blocks = [*session.pending, *staged]
            sealing = finishing is not None and hasher is not None and hasher.algorithm == finishing.algorithm
            if sealing:
                assert finishing is not None and hasher is not None
                check_digest(Digest(hasher.algorithm, hasher.hexdigest()), finishing)
            state = hasher.state() if hasher is not None and not sealing else None
            grown = replace(session, offset=session.offset + appended, hash_state=state, pending=tuple(blocks))
            if probe is not None and state is not None and len(blocks) <= MAX_PENDING:
                # Nothing is committed, so no condition arbitrates: the blob itself must still be
                # the version the state names (not finished, cancelled or appended to since).
                blob = await probe
                if (blob.etag if blob is not None else None) != session.blob_etag:
                    raise BlobChanged(f"{session.location} is not the version the upload state names")
                return self._signed(grown)
            if sealing:
                assert finishing is not None
                metadata = sealed_metadata(finishing)
            else:
                metadata = {STATE: OPEN, HASH_STATE: state} if state else {STATE: OPEN}
            if not blocks and session.blob_etag is not None:
                _discard(committed)
                if not sealing:
                    return self._signed(grown)
                etag = await self._content.set_metadata(session.location, metadata, session.blob_etag)
            else:
                existing = await committed if committed is not None else []
                etag = await self._content.commit(session.location, existing, blocks, metadata, session.blob_etag)
        except BlobChanged:
            raise RegistryError(RANGE_INVALID, "another request changed this upload first") from None
        except LengthMismatch as error:
            raise RegistryError(SIZE_INVALID, f"chunk length mismatch: {error}") from None
        except TooManyBlocks:
            raise RegistryError(BLOB_UPLOAD_INVALID, f"the upload has too many chunks (storage keeps at most "
                                f"{MAX_BLOCKS} per blob); push it again in larger chunks") from None
        finally:
            _discard(committed)
            _discard(probe)
        return self._signed(replace(grown, blob_etag=etag, pending=(),
                                    sealed_digest=str(finishing) if sealing else None))

    async def seal(self, session: UploadSession, digest: Digest,
                   verified: Callable[[UploadSession], None] | None = None) -> BlobState:
        """Verify the upload against the client's digest and seal it; the sealed blob's state.

        `verified` is told the session once its bytes are known to have that digest, before the
        seal is written (so the caller may start work that needs a verified digest). Sealing an
        upload already sealed with this digest (a retried or concurrent finish) is not an error:
        whoever sealed it, the bytes were verified.
        """
        from_client = session.resumable  # a state the client sent may be behind storage
        for _ in range(3):
            if session.sealed_digest is not None:
                if session.sealed_digest != str(digest):
                    raise RegistryError(DIGEST_INVALID, f"the upload was finished as {session.sealed_digest}")
                return BlobState(session.offset, session.blob_etag or "", sealed_metadata(digest))
            if session.pending and not self._hashes(session, digest.algorithm):
                try:  # staged bytes this digest cannot be checked against: commit them, then read them
                    session = await self._commit_pending(session)
                except BlobChanged:
                    session, from_client = await self.current(session, finished_ok=True), False
                    continue
            actual = await self._digest(session, digest.algorithm)
            if actual != digest and from_client:
                session, from_client = await self.current(session, finished_ok=True), False
                continue  # only storage may refuse the digest: a retried PUT finds it sealed
            check_digest(actual, digest)
            if verified is not None:
                verified(session)
            try:
                if session.pending or session.blob_etag is None:
                    existing = await self._content.committed_blocks(session.location) if session.blob_etag else []
                    etag = await self._content.commit(session.location, existing, list(session.pending),
                                                      sealed_metadata(digest), session.blob_etag)
                else:
                    etag = await self._content.set_metadata(session.location, sealed_metadata(digest),
                                                            session.blob_etag)
            except BlobChanged:
                session, from_client = await self.current(session, finished_ok=True), False
                continue
            return BlobState(session.offset, etag, sealed_metadata(digest))
        raise RegistryError(RANGE_INVALID, "the upload changed while it was being finished")

    def _hashes(self, session: UploadSession, algorithm: str) -> bool:
        hasher = self._running_hash(session)
        return hasher is not None and hasher.algorithm == algorithm

    async def _commit_pending(self, session: UploadSession) -> UploadSession:
        existing = await self._content.committed_blocks(session.location) if session.blob_etag else []
        metadata = {STATE: OPEN, HASH_STATE: session.hash_state} if session.hash_state else {STATE: OPEN}
        etag = await self._content.commit(session.location, existing, list(session.pending), metadata,
                                          session.blob_etag)
        return replace(session, blob_etag=etag, pending=())

    async def _digest(self, session: UploadSession, algorithm: str) -> Digest:
        hasher = self._running_hash(session)
        if hasher is not None and hasher.algorithm == algorithm:
            return Digest(algorithm, hasher.hexdigest())
        # No running hash of this algorithm (the POST named another one, or the state could
        # not be saved): hash what is stored, pinned to the version that was read (seal
        # commits staged blocks first).
        if session.pending:
            raise RegistryError(RANGE_INVALID, "the upload has uncommitted bytes")
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
        holds an older state cannot re-create it; the expiry purge removes it.
        """
        for _ in range(2):
            try:
                await self._content.truncate(session.location, {STATE: CANCELLED}, session.blob_etag)
                return
            except BlobChanged:
                session = await self.current(session)  # unknown if finished or cancelled meanwhile
        raise _unknown()

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete the blobs of uploads that expired unfinished; returns how many (with old
        session rows).

        An upload's blob changes with every commit, and its state expires at most the TTL after
        its POST: a blob unchanged for the TTL belongs to an expired upload. Finished content
        (sealed, condemned) is the garbage collector's to judge. A listing of every upload
        blob: meant for the hourly job, not a request path.
        """
        cutoff = (now or _now()) - self._ttl - PURGE_MARGIN
        purged = 0
        async for name, state, changed in self._content.list(UPLOAD_PREFIX):
            if changed < cutoff and state.metadata.get(STATE, OPEN) in (OPEN, CANCELLED, DROPPED):
                if await self._content.delete(name, state.etag):
                    purged += 1
        # Session rows written before states travelled in the Location: nothing reads them.
        query = "RowKey gt @low and RowKey lt @high and expires lt @cutoff"
        params = {"low": UPLOAD, "high": next_key(UPLOAD), "cutoff": now or _now()}
        async for row in self._metadata.repos.query_entities(query, parameters=params,
                                                             select=["PartitionKey", "RowKey"]):
            await self._metadata.repos.delete_entity(row["PartitionKey"], row["RowKey"])
            purged += 1
        return purged


async def _hashed(chunks: AsyncIterator[bytes], hasher: RunningHash | None,
                  stale: Callable[[], bool]) -> AsyncIterator[bytes]:
    """The stream, fed to the running hash on its way to storage, until the upload is `stale`."""
    async for chunk in chunks:
        if stale():
            raise BlobChanged("the upload moved on while this chunk was sent")
        if hasher is not None:
            hasher.update(chunk)
        yield chunk


def _discard(task: asyncio.Future[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
