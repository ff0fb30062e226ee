"""Retention: untagged manifests deleted after the policy's days, referrers with their deleted
subject, unreferenced blob links; never what a tag, an index or a live subject reaches, never
anything locked, and never what a concurrent push is about to reference.

Its own tables and container (a run judges every repository in them). Runs happen in-process,
as the timer runs them, with `now` moved forward to stand in for days passing; the command
line is exercised as an operator uses it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from registry.app import BerthApplication
from registry.azurite import PROJECT_ROOT, Azurite
from registry.settings import load_settings
from registry.storage.retention import RetentionReport
from tests.conftest import Server, start_server, stop_server
from tests.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)

PREFIX = "berthret"
SETTINGS = {"BERTH_TABLE_PREFIX": PREFIX, "BERTH_BLOB_CONTAINER": PREFIX}
LATER = timedelta(days=2)


@pytest.fixture(scope="module")
def retention_servers(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    tmp = tmp_path_factory.mktemp("retention")
    started: list[Server] = []
    try:
        for _ in range(2):
            started.append(start_server(azurite, tmp, BERTH_DOCKER_RENDITIONS="retr/*", **SETTINGS))
        yield started
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture
def http(retention_servers: list[Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=retention_servers[0].url, timeout=60) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"ret/{os.urandom(5).hex()}"


def environment(azurite: Azurite, **extra: str) -> dict[str, str]:
    return {"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, "BERTH_RETENTION_MARGIN_SECONDS": "0",
            **SETTINGS, **extra}


def retention(azurite: Azurite, repositories: list[str], later: timedelta = timedelta(0), dry_run: bool = False,
              **extra: str) -> RetentionReport:
    """One retention run, as the daily timer makes it, `later` from now."""
    async def run() -> RetentionReport:
        berth = BerthApplication(load_settings(environment(azurite, **extra)))
        try:
            store = (await berth.context()).store
            return await store.retention.run(repositories, dry_run, datetime.now(UTC) + later)
        finally:
            await berth.close()

    return asyncio.run(run())


def cli(azurite: Azurite, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registry", "retention", *args], cwd=PROJECT_ROOT,
                          env={**os.environ, **environment(azurite, **extra)}, capture_output=True, text=True,
                          timeout=120)


def enable(azurite: Azurite, repository: str, days: int) -> None:
    result = cli(azurite, "set", "--repository", repository, "--status", "enabled", "--days", str(days))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "UntaggedManifests", "status": "enabled", "days": days,
                                         "source": "repository"}


def exists(http: httpx.Client, repository: str, reference: str) -> bool:
    status = http.head(f"/v2/{repository}/manifests/{reference}",
                       headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}).status_code
    assert status in (200, 404)
    return status == 200


def lock(http: httpx.Client, path: str, **flags: bool) -> None:
    assert http.patch(f"/acr/v1/{path}", json=flags).status_code == 200


def platform(http: httpx.Client, repository: str, arch: str) -> tuple[str, bytes]:
    """An image manifest pushed by digest only (as a child of an index is)."""
    pushed = platform_or_refused(http, repository, arch)
    assert pushed is not None
    return pushed


def platform_or_refused(http: httpx.Client, repository: str, arch: str) -> tuple[str, bytes] | None:
    """As `platform`; None if the push was refused because a blob it named was unlinked first."""
    config = json.dumps({"architecture": arch, "os": "linux", "n": os.urandom(4).hex()}).encode()
    layer = os.urandom(900)
    push_blob(http, repository, config)
    push_blob(http, repository, layer)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                       "layers": [descriptor(OCI_LAYER, layer)]}).encode()
    response = put_manifest(http, repository, sha256(body), body)
    if response.status_code == 201:
        return sha256(body), body
    assert response.status_code == 400 and error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"], response.text
    return None


def index_of(children: list[tuple[str, bytes]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
         "platform": {"architecture": f"a{i}", "os": "linux"}} for i, (digest, body) in enumerate(children)]}).encode()


def signature(http: httpx.Client, repository: str, subject: str, subject_body: bytes) -> str:
    """A referrer of `subject` (a signature, as notation pushes one), pushed by digest."""
    empty = b"{}"
    push_blob(http, repository, empty)
    payload = os.urandom(300)
    push_blob(http, repository, payload)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.cncf.notary",
                       "config": descriptor(OCI_EMPTY, empty),
                       "layers": [descriptor("application/jose+json", payload)],
                       "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                                   "size": len(subject_body)}}).encode()
    response = put_manifest(http, repository, sha256(body), body)
    assert response.status_code == 201, response.text
    return sha256(body)


def test_an_untagged_manifest_goes_after_its_days_and_a_tagged_one_stays(
        azurite: Azurite, http: httpx.Client, name: str) -> None:
    old, _ = push_image(http, name, "v1")
    enable(azurite, name, 1)  # a repository's own policy (it must exist)
    new, body = push_image(http, name, "v1")  # v1 moves: `old` is untagged from now on
    kept = retention(azurite, [name])  # a day has not passed
    assert kept.deleted == [] and exists(http, name, old)

    dry = retention(azurite, [name], LATER, dry_run=True)
    assert dry.deleted == [f"{name}@{old}"] and exists(http, name, old)

    report = retention(azurite, [name], LATER)
    assert report.deleted == [f"{name}@{old}"]
    assert not exists(http, name, old)
    pulled = http.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200 and pulled.content == body and pulled.headers["Docker-Content-Digest"] == new
    # Not enabled for the repository: nothing is judged by age.
    other = f"{name}-off"
    untagged, _ = push_image(http, other, "v1")
    push_image(http, other, "v1")
    assert retention(azurite, [other], LATER).deleted == [] and exists(http, other, untagged)


def test_the_clock_starts_when_the_last_tag_goes(azurite: Azurite, http: httpx.Client, name: str) -> None:
    """Days 0 and a 4-second margin stand in for the days: the manifest pushed long ago is kept
    until 4 s after it lost its tag, whether the tag moved or was deleted."""
    moved, _ = push_image(http, name, "v1")
    enable(azurite, name, 0)
    deleted, _ = push_image(http, name, "v2")
    time.sleep(5)  # both pushed "long" ago
    push_image(http, name, "v1")
    assert http.delete(f"/v2/{name}/manifests/v2").status_code == 202
    assert retention(azurite, [name], BERTH_RETENTION_MARGIN_SECONDS="4").deleted == []
    time.sleep(5)
    report = retention(azurite, [name], BERTH_RETENTION_MARGIN_SECONDS="4")
    assert sorted(report.deleted) == sorted([f"{name}@{moved}", f"{name}@{deleted}"])


def test_an_index_keeps_its_children_and_takes_them_when_it_goes(
        azurite: Azurite, http: httpx.Client, name: str) -> None:
    children = [platform(http, name, arch) for arch in ("amd64", "arm64")]
    enable(azurite, name, 1)
    index = index_of(children)
    assert put_manifest(http, name, "multi", index, OCI_INDEX).status_code == 201
    assert retention(azurite, [name], LATER).deleted == []  # untagged children, reached by a tagged index
    for digest, _ in children:
        assert exists(http, name, digest)

    assert http.delete(f"/v2/{name}/manifests/multi").status_code == 202  # the index is untagged now
    report = retention(azurite, [name], LATER)
    assert sorted(report.deleted) == sorted(f"{name}@{d}" for d in [sha256(index), *(c[0] for c in children)])
    # The index went first (an index never names a deleted child), then its children.
    assert report.deleted[0] == f"{name}@{sha256(index)}"
    assert not any(exists(http, name, digest) for digest, _ in children)


def test_an_untagged_index_that_stays_keeps_its_children(azurite: Azurite, http: httpx.Client, name: str) -> None:
    children = [platform(http, name, "amd64")]
    enable(azurite, name, 1)
    index = index_of(children)
    assert put_manifest(http, name, sha256(index), index, OCI_INDEX).status_code == 201
    lock(http, f"{name}/_manifests/{sha256(index)}", deleteEnabled=False)  # untagged, but locked: stays
    assert retention(azurite, [name], LATER).deleted == []
    assert exists(http, name, children[0][0])


def test_locked_manifests_and_repositories_survive_retention(azurite: Azurite, http: httpx.Client, name: str) -> None:
    kept, _ = push_image(http, name, "v1")
    enable(azurite, name, 1)
    frozen, _ = push_image(http, name, "v2")
    push_image(http, name, "v1")
    push_image(http, name, "v2")  # both are untagged now
    lock(http, f"{name}/_manifests/{kept}", deleteEnabled=False)
    lock(http, f"{name}/_manifests/{frozen}", writeEnabled=False)
    lock(http, f"{name}/_tags/v1", writeEnabled=False, deleteEnabled=False)  # a locked tag: tagged, so kept
    assert retention(azurite, [name], LATER).deleted == []
    assert exists(http, name, kept) and exists(http, name, frozen) and exists(http, name, "v1")

    lock(http, f"{name}/_manifests/{kept}", deleteEnabled=True)
    lock(http, name, writeEnabled=False)  # the repository: nothing in it is judged
    report = retention(azurite, [name], LATER)
    assert report.deleted == [] and report.locked_repositories == 1 and exists(http, name, kept)
    lock(http, name, writeEnabled=True)
    assert retention(azurite, [name], LATER).deleted == [f"{name}@{kept}"]


def test_a_signature_goes_with_its_deleted_subject(azurite: Azurite, http: httpx.Client, name: str) -> None:
    """Whatever the policy (disabled here): referrers of a deleted subject are deleted, and a
    signature of that signature after it; a subject that stays keeps its referrers."""
    subject, subject_body = push_image(http, name, "v1")
    assert cli(azurite, "set", "--repository", name, "--status", "disabled").returncode == 0
    sig = signature(http, name, subject, subject_body)
    countersig = signature(http, name, sig, http.get(f"/v2/{name}/manifests/{sig}",
                                                     headers={"Accept": OCI_MANIFEST}).content)
    early = signature(http, name, sha256(b"not pushed yet"), b"not pushed yet")  # before its subject: stays
    assert retention(azurite, [name], LATER).deleted == []

    assert http.delete(f"/v2/{name}/manifests/{subject}").status_code == 202
    dry = retention(azurite, [name], LATER, dry_run=True)  # the later pass foreseen
    assert sorted(dry.deleted) == sorted([f"{name}@{sig}", f"{name}@{countersig}"])
    report = retention(azurite, [name], LATER)
    assert report.deleted == [f"{name}@{sig}", f"{name}@{countersig}"] and report.referrers_deleted == 2
    assert not exists(http, name, sig) and not exists(http, name, countersig) and exists(http, name, early)


def test_an_old_untagged_signature_of_a_live_subject_stays(azurite: Azurite, http: httpx.Client, name: str) -> None:
    subject, subject_body = push_image(http, name, "v1")
    enable(azurite, name, 1)
    sig = signature(http, name, subject, subject_body)
    assert retention(azurite, [name], LATER).deleted == []
    push_image(http, name, "v1")  # the subject loses its tag: it goes, and its signature with it
    report = retention(azurite, [name], LATER)
    assert report.deleted == [f"{name}@{subject}", f"{name}@{sig}"]  # the subject first, a pass apart
    referrers = http.get(f"/v2/{name}/referrers/{subject}").json()
    assert referrers["manifests"] == []


def test_a_pushed_docker_rendition_keeps_the_oci_children_it_is_made_of(
        azurite: Azurite, http: httpx.Client) -> None:
    """A Docker-only client pulls an OCI index (served as a Docker manifest list whose children
    are renditions of the OCI children) and pushes it under a tag of its own. When the OCI
    index loses its tag and goes, the OCI children stay: the tagged list's children are their
    renditions, which exist and are served only with their sources."""
    name = f"retr/{os.urandom(5).hex()}"
    children = [platform(http, name, arch) for arch in ("amd64", "arm64")]
    assert put_manifest(http, name, "1.2", index_of(children), OCI_INDEX).status_code == 201
    enable(azurite, name, 1)
    docker_list = http.get(f"/v2/{name}/manifests/1.2", headers={"Accept": DOCKER_LIST})
    assert docker_list.status_code == 200 and docker_list.headers["Content-Type"] == DOCKER_LIST
    assert put_manifest(http, name, "stable", docker_list.content, DOCKER_LIST).status_code == 201
    push_image(http, name, "1.2")  # the OCI index is untagged now
    report = retention(azurite, [name], LATER)
    assert len(report.deleted) == 1  # the OCI index alone
    for child in json.loads(docker_list.content)["manifests"]:
        got = http.get(f"/v2/{name}/manifests/{child['digest']}", headers={"Accept": DOCKER_MANIFEST})
        assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == child["digest"]
    for digest, _ in children:
        assert exists(http, name, digest)


def test_links_no_manifest_references_go(
        azurite: Azurite, http: httpx.Client, name: str) -> None:
    shared = os.urandom(700)
    push_blob(http, name, shared)
    first = os.urandom(800)
    push_blob(http, name, first)
    config = json.dumps({"os": "linux", "n": 1}).encode()
    push_blob(http, name, config)

    def manifest(*layers: bytes) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                           "layers": [descriptor(OCI_LAYER, layer) for layer in layers]}).encode()

    assert put_manifest(http, name, "v1", manifest(shared, first)).status_code == 201
    enable(azurite, name, 1)
    second = os.urandom(800)
    push_blob(http, name, second)
    assert put_manifest(http, name, "v1", manifest(shared, second)).status_code == 201
    stray = push_blob(http, name, os.urandom(100))  # no manifest ever named it
    report = retention(azurite, [name], LATER)
    assert report.deleted == [f"{name}@{sha256(manifest(shared, first))}"] and report.links_removed == 2
    assert http.head(f"/v2/{name}/blobs/{sha256(first)}").status_code == 404
    assert http.head(f"/v2/{name}/blobs/{stray}").status_code == 404
    for kept in (shared, second, config):
        got = http.get(f"/v2/{name}/blobs/{sha256(kept)}", follow_redirects=True)
        assert got.status_code == 200 and got.content == kept
    # A link younger than the GC grace period is not judged yet (a push may be on its way).
    fresh = push_blob(http, name, os.urandom(100))
    assert retention(azurite, [name], timedelta(hours=1)).links_removed == 0
    assert http.head(f"/v2/{name}/blobs/{fresh}").status_code == 200


def test_the_command_line(azurite: Azurite, http: httpx.Client, name: str) -> None:
    shown = cli(azurite, "show", BERTH_RETENTION_DAYS="30")
    assert shown.returncode == 0 and json.loads(shown.stdout) == {
        "type": "UntaggedManifests", "status": "enabled", "days": 30, "source": "setting"}
    registry = cli(azurite, "set", "--status", "enabled", "--days", "9")
    assert registry.returncode == 0 and json.loads(registry.stdout) == {
        "type": "UntaggedManifests", "status": "enabled", "days": 9, "source": "registry"}
    try:
        first, _ = push_image(http, name, "v1")
        untagged, _ = push_image(http, name, "v1")
        push_image(http, name, "v1")
        inherited = cli(azurite, "show", "--repository", name)
        assert json.loads(inherited.stdout)["source"] == "registry"
        now = cli(azurite, "set", "--repository", name, "--status", "enabled", "--days", "0")
        assert json.loads(now.stdout)["days"] == 0
        dry = cli(azurite, "run", name, "--dry-run")
        assert dry.returncode == 0 and "would delete 2 manifests" in dry.stdout
        assert f"would delete {name}@{first}" in dry.stdout and f"would delete {name}@{untagged}" in dry.stdout
        off = cli(azurite, "set", "--repository", name, "--status", "disabled")
        assert json.loads(off.stdout) == {"type": "UntaggedManifests", "status": "disabled", "days": 0,
                                          "source": "repository"}
        assert "deleted 0 manifests" in cli(azurite, "run", name).stdout
        back = cli(azurite, "set", "--repository", name, "--status", "inherit")
        assert json.loads(back.stdout)["source"] == "registry"
        # Nine days have not passed: nothing goes (the run's own clock is now).
        ran = cli(azurite, "run", name)
        assert ran.returncode == 0 and "deleted 0 manifests" in ran.stdout and exists(http, name, untagged)
    finally:
        assert cli(azurite, "set", "--status", "inherit").returncode == 0
    for bad in (["set", "--status", "enabled", "--days", "366"], ["set", "--status", "on"],
                ["set", "--repository", "Bad Name", "--status", "enabled"],
                ["set", "--status", "inherit", "--days", "3"]):
        result = cli(azurite, *bad)
        assert result.returncode == 2 and result.stderr.strip(), bad
    unknown = cli(azurite, "set", "--repository", f"{name}-never", "--status", "enabled")
    assert unknown.returncode == 1 and "not known" in unknown.stderr


RETENTION_LOOP = """
import asyncio, sys, pathlib
from registry.app import BerthApplication
from registry.settings import load_settings

async def main():
    berth = BerthApplication(load_settings())
    store = (await berth.context()).store
    stop, runs, deleted = pathlib.Path(sys.argv[1]), 0, 0
    while not stop.exists():
        deleted += len((await store.retention.run(sys.argv[2:])).deleted)
        runs += 1
        stop.with_suffix(".runs").write_text(str(runs))
    await berth.close()
    print(runs, deleted)

asyncio.run(main())
"""


def test_retention_under_fire_never_breaks_an_acknowledged_push(
        azurite: Azurite, retention_servers: list[Server], tmp_path: Path) -> None:
    """Retention with zero days, zero margin and zero link grace runs back to back in a process
    of its own while two instances push children by digest, then the index that names them,
    and move tags. A push may be refused (MANIFEST_BLOB_UNKNOWN: what it named was deleted
    first); every acknowledged index that is still tagged pulls whole at the end."""
    repositories = [f"ret/fire{i}-{os.urandom(3).hex()}" for i in range(2)]
    clients = [httpx.Client(base_url=server.url, timeout=60) for server in retention_servers]
    for repository in repositories:
        push_image(clients[0], repository, "seed")
        enable(azurite, repository, 0)
    stop = tmp_path / "stop"
    env = {**os.environ, **environment(azurite, BERTH_GC_GRACE_SECONDS="0")}
    runner = subprocess.Popen([sys.executable, "-c", RETENTION_LOOP, str(stop), *repositories], cwd=PROJECT_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tagged: dict[tuple[str, str], tuple[bytes, list[tuple[str, bytes]]]] = {}
    lock_ = threading.Lock()
    refusals: list[str] = []

    failures: list[BaseException] = []

    def runs_so_far() -> int:
        counted = stop.with_suffix(".runs")
        return int(counted.read_text() or 0) if counted.exists() else 0

    def push(worker: int) -> None:
        try:
            push_rounds(worker)
        except BaseException as error:  # noqa: BLE001 (reported by the test, not the thread)
            failures.append(error)

    def push_rounds(worker: int) -> None:
        http = clients[worker % 2]
        repository = repositories[worker % 2]
        # Ten rounds at least, and on until retention has run twice meanwhile (a loaded machine
        # starts its process late), within a bound.
        for round_ in range(60):
            if round_ >= 10 and runs_so_far() >= 2:
                return
            tag = f"w{worker}-{round_ % 3}"
            pushed = [platform_or_refused(http, repository, arch) for arch in ("amd64", "arm64")]
            children = [child for child in pushed if child is not None]
            if len(children) < 2:
                refusals.append(f"{repository}: a child refused")
                continue
            index = index_of(children)
            response = put_manifest(http, repository, tag, index, OCI_INDEX)
            if response.status_code == 201:
                with lock_:
                    tagged[(repository, tag)] = (index, children)
            else:
                assert response.status_code == 400 and error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"], \
                    response.text
                refusals.append(response.text)

    try:
        workers = [threading.Thread(target=push, args=(i,)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.touch()
        out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, err
    assert not failures, failures
    runs, deleted = (int(n) for n in out.split())
    # It ran while the pushes did, and deleted (moved tags leave untagged indexes and children).
    assert runs >= 2 and deleted > 0 and tagged, (runs, deleted, len(tagged), len(refusals))
    retention(azurite, repositories, BERTH_GC_GRACE_SECONDS="0")  # and once more, with nothing running
    http = clients[0]
    for (repository, tag), (index, children) in tagged.items():
        got = http.get(f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_INDEX})
        assert got.status_code == 200 and got.content == index, (repository, tag)
        for digest, body in children:
            child = http.get(f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
            assert child.status_code == 200 and child.content == body, (repository, tag, digest)
            for blob in json.loads(body)["layers"] + [json.loads(body)["config"]]:
                got_blob = http.get(f"/v2/{repository}/blobs/{blob['digest']}", follow_redirects=True)
                assert got_blob.status_code == 200 and sha256(got_blob.content) == blob["digest"]
    for client in clients:
        client.close()
