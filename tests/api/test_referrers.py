"""The referrers API as a client sees it: pages linked by `Link`, filters, annotations of any
size, and the list after the subject is deleted."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from registry.azurite import Azurite
from tests.conftest import start_server, stop_server
from tests.helpers import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, descriptor, push_blob, push_image, put_manifest, sha256

PAGE_SIZE = 4
SBOM = "application/vnd.example.sbom+json"  # a '+': it must survive the query string
SIGNATURE = "application/vnd.example.signature"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def small_pages(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    instance = start_server(azurite, tmp_path_factory.mktemp("referrers"),
                            BERTH_REFERRERS_PAGE_SIZE=str(PAGE_SIZE))
    try:
        with httpx.Client(base_url=instance.url, timeout=60) as http:
            yield http
    finally:
        stop_server(instance)


def push_referrer(client: httpx.Client, repo: str, subject: str, artifact_type: str,
                  annotations: dict[str, str] | None = None) -> str:
    """Push an artifact manifest whose subject is the manifest `subject`; return its digest."""
    push_blob(client, repo, b"{}")
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": descriptor(OCI_EMPTY, b"{}"), "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1234},
        "annotations": {"nonce": os.urandom(8).hex(), **(annotations or {})},
    }
    body = json.dumps(document).encode()
    response = put_manifest(client, repo, sha256(body), body)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject
    return response.headers["Docker-Content-Digest"]


def read_pages(client: httpx.Client, url: str, **params: str) -> list[httpx.Response]:
    """Every page of a referrers list, following `Link: <...>; rel="next"` as clients do."""
    pages = [client.get(url, params=params)]
    while "Link" in pages[-1].headers:
        assert pages[-1].status_code == 200, pages[-1].text
        assert len(pages) < 100, "the Link chain does not end"
        link = pages[-1].headers["Link"]
        assert link.endswith('>; rel="next"'), link
        pages.append(client.get(link[1:link.index(">")]))
    assert pages[-1].status_code == 200, pages[-1].text
    return pages


def digests(pages: list[httpx.Response]) -> list[str]:
    return [entry["digest"] for page in pages for entry in page.json()["manifests"]]


def test_referrers_come_in_linked_pages(small_pages: httpx.Client, repo: str) -> None:
    client = small_pages
    subject, _ = push_image(client, repo, "app")
    sboms = {push_referrer(client, repo, subject, SBOM) for _ in range(3)}
    signatures = {push_referrer(client, repo, subject, SIGNATURE) for _ in range(8)}

    pages = read_pages(client, f"/v2/{repo}/referrers/{subject}")
    assert [len(page.json()["manifests"]) for page in pages] == [4, 4, 3]
    for page in pages:
        assert page.headers["Content-Type"].startswith(OCI_INDEX)
        assert page.json()["schemaVersion"] == 2
        assert "OCI-Filters-Applied" not in page.headers
    listed = digests(pages)
    assert sorted(listed) == sorted(sboms | signatures)  # each referrer exactly once
    assert listed == sorted(listed)

    # Filtered in storage: the first page is full although most referrers are signatures.
    filtered = read_pages(client, f"/v2/{repo}/referrers/{subject}", artifactType=SBOM)
    assert [len(page.json()["manifests"]) for page in filtered] == [3]
    assert set(digests(filtered)) == sboms
    signed = read_pages(client, f"/v2/{repo}/referrers/{subject}", artifactType=SIGNATURE)
    assert [len(page.json()["manifests"]) for page in signed] == [4, 4]
    assert sorted(digests(signed)) == sorted(signatures)
    for page in filtered + signed:
        assert page.headers["OCI-Filters-Applied"] == "artifactType"
        assert {entry["artifactType"] for entry in page.json()["manifests"]} <= {SBOM, SIGNATURE}
    link = signed[0].headers["Link"]
    assert link.startswith(f"</v2/{repo}/referrers/{subject}?")
    assert parse_qs(urlsplit(link[1:link.index(">")]).query)["artifactType"] == [SIGNATURE]

    # `n` asks for smaller pages; a larger one is clamped to the configured page size.
    by_two = read_pages(client, f"/v2/{repo}/referrers/{subject}", n="2")
    assert [len(page.json()["manifests"]) for page in by_two] == [2] * 5 + [1]
    assert digests(by_two) == listed
    assert [len(p.json()["manifests"]) for p in read_pages(client, f"/v2/{repo}/referrers/{subject}", n="50")] \
        == [4, 4, 3]
    none = client.get(f"/v2/{repo}/referrers/{subject}", params={"n": "0"})
    assert none.json()["manifests"] == [] and "Link" not in none.headers


def test_continuation_is_stable_while_referrers_are_pushed(small_pages: httpx.Client, repo: str) -> None:
    client = small_pages
    subject, _ = push_image(client, repo, "app")
    before = {push_referrer(client, repo, subject, SIGNATURE) for _ in range(9)}
    first = client.get(f"/v2/{repo}/referrers/{subject}")
    seen = [entry["digest"] for entry in first.json()["manifests"]]
    url: str | None = first.headers["Link"][1:first.headers["Link"].index(">")]
    pushed_meanwhile: set[str] = set()
    while url:
        pushed_meanwhile |= {push_referrer(client, repo, subject, SIGNATURE) for _ in range(3)}
        page = client.get(url)
        seen += [entry["digest"] for entry in page.json()["manifests"]]
        link = page.headers.get("Link")
        url = link[1:link.index(">")] if link else None
    assert len(seen) == len(set(seen))  # nothing twice
    assert before <= set(seen)  # nothing that was there all along is skipped
    assert set(seen) <= before | pushed_meanwhile


def test_annotations_of_any_size_are_listed_intact(client: httpx.Client, repo: str) -> None:
    subject, _ = push_image(client, repo, "app")
    small = {"org.example.note": "small"}
    large = {"org.example.blob": "a" * 100_000}
    huge = {"org.example.blob": "b" * 1_000_000}
    wide = {"org.example.text": "é€😀" * 20_000}  # escapes to far more than a table string holds
    long_type = "application/vnd.example." + "x" * 40_000  # too long for a table property too
    pushed = {
        push_referrer(client, repo, subject, SBOM, small): (SBOM, small),
        push_referrer(client, repo, subject, SBOM, large): (SBOM, large),
        push_referrer(client, repo, subject, SIGNATURE, huge): (SIGNATURE, huge),
        push_referrer(client, repo, subject, SIGNATURE, wide): (SIGNATURE, wide),
        push_referrer(client, repo, subject, long_type): (long_type, {}),
    }
    pages = read_pages(client, f"/v2/{repo}/referrers/{subject}")
    listed = {entry["digest"]: entry for page in pages for entry in page.json()["manifests"]}
    assert set(listed) == set(pushed)
    for digest, (artifact_type, expected) in pushed.items():
        entry = listed[digest]
        assert entry["artifactType"] == artifact_type
        assert {k: v for k, v in entry["annotations"].items() if k != "nonce"} == expected
        manifest = client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
        assert entry["annotations"] == manifest.json()["annotations"]
        assert entry["size"] == len(manifest.content)
    signed = read_pages(client, f"/v2/{repo}/referrers/{subject}", artifactType=SIGNATURE)
    assert {entry["digest"]: entry for page in signed for entry in page.json()["manifests"]} == {
        digest: listed[digest] for digest, (kind, _) in pushed.items() if kind == SIGNATURE
    }


def test_pages_stay_within_one_mebibyte(small_pages: httpx.Client, repo: str) -> None:
    client = small_pages
    subject, _ = push_image(client, repo, "app")
    pushed = {push_referrer(client, repo, subject, SBOM, {"org.example.blob": os.urandom(200_000).hex()})
              for _ in range(3)}  # 400 KB each: two fit a page, three do not
    oversized = push_referrer(client, repo, subject, SBOM, {"org.example.blob": "c" * (3 * MiB // 2)})
    pages = read_pages(client, f"/v2/{repo}/referrers/{subject}")
    assert sorted(digests(pages)) == sorted(pushed | {oversized})
    assert len(pages) >= 3
    for page in pages:
        entries = page.json()["manifests"]
        assert len(page.content) <= MiB or [entry["digest"] for entry in entries] == [oversized]
        for entry in entries:
            value = entry["annotations"]["org.example.blob"]
            assert len(value) == (3 * MiB // 2 if entry["digest"] == oversized else 400_000)


def test_deleting_the_subject_removes_its_referrers(client: httpx.Client, repo: str) -> None:
    subject, _ = push_image(client, repo, "app")
    referrers = {push_referrer(client, repo, subject, SIGNATURE) for _ in range(130)}  # > one transaction
    referrers.add(push_referrer(client, repo, subject, SBOM, {"org.example.blob": "d" * 100_000}))
    other, _ = push_image(client, repo, "other")
    untouched = push_referrer(client, repo, other, SBOM)
    assert sorted(digests(read_pages(client, f"/v2/{repo}/referrers/{subject}"))) == sorted(referrers)

    assert client.delete(f"/v2/{repo}/manifests/{subject}").status_code == 202
    after = client.get(f"/v2/{repo}/referrers/{subject}")
    assert after.status_code == 200
    assert after.json()["manifests"] == [] and "Link" not in after.headers
    assert client.get(f"/v2/{repo}/referrers/{subject}", params={"artifactType": SBOM}).json()["manifests"] == []
    # The referrer manifests themselves stay, as do the referrers of other subjects.
    some = sorted(referrers)[0]
    assert client.get(f"/v2/{repo}/manifests/{some}", headers={"Accept": OCI_MANIFEST}).status_code == 200
    assert digests(read_pages(client, f"/v2/{repo}/referrers/{other}")) == [untouched]


def test_referrers_pushed_before_their_subject(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, b"{}")
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, b"{}"), "layers": [], "annotations": {"n": os.urandom(8).hex()},
    }).encode()
    subject = sha256(body)
    early = push_referrer(client, repo, subject, SBOM)  # the subject does not exist yet
    assert digests(read_pages(client, f"/v2/{repo}/referrers/{subject}")) == [early]
    assert put_manifest(client, repo, "app", body).status_code == 201
    assert digests(read_pages(client, f"/v2/{repo}/referrers/{subject}")) == [early]
    assert client.delete(f"/v2/{repo}/manifests/{subject}").status_code == 202
    assert client.get(f"/v2/{repo}/referrers/{subject}").json()["manifests"] == []
