"""Import: a server-side copy of an image from another registry into a repository of Berth
(ACR's `az acr import`), every platform of an index and optionally its referrers.

Each piece goes through the same paths as a push, so every rule of a push holds: blobs stream
from upstream into an upload (never whole in memory) whose digest and length are checked
before anything is committed (a mismatch stores nothing); manifests are verified against the
digest asked for and stored with `put_manifest` (children before their index, an index only
once every child is there; locks apply). Content the repository has is not fetched again, and
content another repository has is linked from the digest index, so repeating an import that
was cut short goes on where it stopped and costs upstream only what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import IMPORT_CONFLICT, MANIFEST_INVALID, MANIFEST_UNKNOWN, RegistryError
from registry.oci.manifest import Descriptor, parse_manifest
from registry.ops.upstream import SourceImage, UpstreamClient, UpstreamError
from registry.storage.locks import check_write
from registry.storage.registry_store import RegistryStore

BLOBS_IN_FLIGHT = 4
MAX_REFERRER_DEPTH = 3  # a signature of an SBOM of an image
MAX_INDEX_DEPTH = 2  # an index of indexes, no deeper
MAX_MANIFESTS = 2000  # per import: children, referrers and theirs
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
OWNER = "import"  # the owner of the import's upload sessions

# (event, digest, bytes done, bytes in all): "blob" while bytes stream, "present"/"mounted"
# for a blob not fetched, "manifest" for each manifest stored.
Progress = Callable[[str, str, int, int], None]


@dataclass
class ImportReport:
    source: str
    target: str
    digest: str = ""
    tags: list[str] = field(default_factory=list)
    manifests: int = 0
    referrers: int = 0
    blobs_copied: int = 0
    blobs_present: int = 0  # the repository had them
    blobs_mounted: int = 0  # another repository had them: linked, not fetched
    bytes_copied: int = 0

    def summary(self) -> str:
        return (f"imported {self.source} as {self.target}@{self.digest}"
                + (f" (tags {', '.join(self.tags)})" if self.tags else "")
                + f": {self.manifests} manifests ({self.referrers} referrers), {self.blobs_copied} blobs copied "
                f"({self.bytes_copied} bytes), {self.blobs_mounted} linked from other repositories, "
                f"{self.blobs_present} already there")

    def document(self) -> dict[str, object]:
        return {"source": self.source, "repository": self.target, "digest": self.digest, "tags": self.tags,
                "manifests": self.manifests, "referrers": self.referrers, "blobsCopied": self.blobs_copied,
                "bytesCopied": self.bytes_copied, "blobsMounted": self.blobs_mounted,
                "blobsPresent": self.blobs_present}


def _quiet(event: str, digest: str, done: int, total: int) -> None:
    pass


def parse_platform(text: str) -> dict[str, str]:
    """`os/architecture[/variant]`, as docker's --platform."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"a platform is os/architecture[/variant], not {text!r}")
    return dict(zip(("os", "architecture", "variant"), parts, strict=False))


class Importer:
    def __init__(self, store: RegistryStore, client: UpstreamClient, progress: Progress = _quiet,
                 link_from_anywhere: bool = True, tap: Callable[[bytes], Awaitable[None]] | None = None):
        """`link_from_anywhere`: a blob another repository holds is linked, not fetched. Only for
        callers who may read every repository (the operator's command line, an admin): anyone
        else could name a digest they cannot pull and have it linked where they can."""
        self._store = store
        self._client = client
        self._progress = progress
        self._link_from_anywhere = link_from_anywhere
        self._tap = tap  # sees every blob chunk before it is staged (the pull-through's client)
        self._gate = asyncio.Semaphore(BLOBS_IN_FLIGHT)
        self._fetched = 0

    async def run(self, source: SourceImage, repository: str, tags: Sequence[str], force: bool = False,
                  platform: dict[str, str] | None = None, referrers: bool = False) -> ImportReport:
        report = ImportReport(str(source), repository)
        check_write(await self._store.locks.fresh(repository), f"repository {repository}")
        body, media_type, digest = await self._client.manifest(source, source.reference)
        if platform is not None:
            body, media_type, digest = await self._pick(source, body, media_type, digest, platform)
        if not force:
            await self._refuse_moving_tags(repository, tags, digest)
        await self._copy(source, repository, body, media_type, digest, tags, report, referrers, 0)
        report.digest, report.tags = str(digest), list(tags)
        return report

    async def _pick(self, source: SourceImage, body: bytes, media_type: str, digest: Digest,
                    platform: dict[str, str]) -> tuple[bytes, str, Digest]:
        """The one image of an index for `platform` (an image that is not an index: itself)."""
        manifest = parse_manifest(body, media_type)
        if not manifest.children:
            return body, media_type, digest
        for child in manifest.children:
            offered = child.platform or {}
            if all(offered.get(key) == value for key, value in platform.items()):
                return await self._client.manifest(source, str(child.digest))
        wanted = "/".join(platform.values())
        raise RegistryError(MANIFEST_UNKNOWN, f"{source} has no image for platform {wanted}")

    async def _refuse_moving_tags(self, repository: str, tags: Sequence[str], digest: Digest) -> None:
        """Without force, a target tag may only name what it already names (ACR's NoForce)."""
        for tag in tags:
            try:
                existing = await self._store.manifests.get(repository, tag, with_body=False)
            except RegistryError as error:
                if error.error is MANIFEST_UNKNOWN:
                    continue
                raise
            if existing.digest != digest:
                raise RegistryError(IMPORT_CONFLICT, f"{repository}:{tag} exists and names {existing.digest}; "
                                    "import with force (--force, mode Force) to move it")

    async def _present(self, repository: str, digest: Digest) -> bool:
        try:
            await self._store.manifests.get(repository, digest, with_body=False)
        except RegistryError as error:
            if error.error is MANIFEST_UNKNOWN:
                return False
            raise
        return True

    async def _fetch(self, source: SourceImage, digest: Digest) -> tuple[bytes, str, Digest]:
        self._fetched += 1
        if self._fetched > MAX_MANIFESTS:
            raise RegistryError(MANIFEST_INVALID, f"{source} names more than {MAX_MANIFESTS} manifests")
        return await self._client.manifest(source, str(digest))

    async def _copy(self, source: SourceImage, repository: str, body: bytes, media_type: str, digest: Digest,
                    tags: Sequence[str], report: ImportReport, referrers: bool, depth: int,
                    nesting: int = 0) -> None:
        manifest = parse_manifest(body, media_type)
        if manifest.children and nesting >= MAX_INDEX_DEPTH:
            raise RegistryError(MANIFEST_INVALID, f"{source} nests indexes more than {MAX_INDEX_DEPTH} deep")
        if not await self._present(repository, digest):
            for child in manifest.children:  # an index is stored once every child is
                if await self._present(repository, child.digest):
                    continue
                child_body, child_type, child_digest = await self._fetch(source, child.digest)
                await self._copy(source, repository, child_body, child_type, child_digest, (), report, referrers,
                                 depth, nesting + 1)
            await _all(self._blob(source, repository, blob, report) for blob in manifest.blobs)
        await self._store.put_manifest(repository, digest, body, manifest, tags)
        report.manifests += 1
        self._progress("manifest", str(digest), len(body), len(body))
        if referrers and depth < MAX_REFERRER_DEPTH:
            for descriptor in await self._client.referrers(source, digest):
                try:
                    referrer = parse_digest(str(descriptor["digest"]))
                except (KeyError, RegistryError):
                    continue  # not a descriptor: nothing to copy
                referrer_body, referrer_type, referrer = await self._fetch(source, referrer)
                await self._copy(source, repository, referrer_body, referrer_type, referrer, (), report, True,
                                 depth + 1)
                report.referrers += 1
            await self._tagged_referrers(source, repository, digest, report, depth)

    async def _tagged_referrers(self, source: SourceImage, repository: str, digest: Digest, report: ImportReport,
                                depth: int) -> None:
        """Referrers kept as tags, the way cosign stores signatures, attestations and SBOMs
        without the referrers API (`sha256-<hex>.sig`, `.att`, `.sbom`): copied with their tag,
        which moves when upstream's has (cosign rewrites it for every new signature)."""
        for suffix in COSIGN_SUFFIXES:
            tag = f"{digest.algorithm}-{digest.hex}{suffix}"
            try:
                tagged = await self._client.head_manifest(source, tag)
            except UpstreamError as error:
                if error.status == 404:
                    continue
                raise
            body, media_type, found = await self._fetch(source, tagged)
            await self._copy(source, repository, body, media_type, found, (tag,), report, True, depth + 1)
            report.referrers += 1

    async def copy_blob(self, source: SourceImage, repository: str, blob: Descriptor, report: ImportReport) -> None:
        """One blob into `repository`, unless it is there (or, if allowed, linked from another)."""
        await self._blob(source, repository, blob, report)

    async def _blob(self, source: SourceImage, repository: str, blob: Descriptor, report: ImportReport) -> None:
        async with self._gate:
            try:
                await self._store.blobs.stat(repository, blob.digest)
                report.blobs_present += 1
                self._progress("present", str(blob.digest), blob.size, blob.size)
                return
            except RegistryError:
                pass
            if self._link_from_anywhere and await self._store.blobs.mount_indexed(repository, blob.digest) is not None:
                report.blobs_mounted += 1
                self._progress("mounted", str(blob.digest), blob.size, blob.size)
                return
            session = self._store.uploads.fresh(repository, OWNER, blob.digest.algorithm)
            stream = self._counted(self._client.blob(source, blob.digest), blob)
            session = await self._store.uploads.append(session, stream, blob.size, blob.digest)
            await self._store.finish_upload(session, blob.digest)
            report.blobs_copied += 1
            report.bytes_copied += blob.size

    async def _counted(self, chunks: AsyncIterator[bytes], blob: Descriptor) -> AsyncIterator[bytes]:
        done = 0
        async with aclosing(chunks):
            async for chunk in chunks:
                done += len(chunk)
                if done > blob.size:  # stop now: the upload would refuse it only at the end
                    raise UpstreamError(502, f"upstream sent more than the {blob.size} bytes of blob {blob.digest}")
                self._progress("blob", str(blob.digest), done, blob.size)
                if self._tap is not None:
                    await self._tap(chunk)
                yield chunk


async def _all(work: Iterable[Awaitable[None]]) -> None:
    """Run concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

