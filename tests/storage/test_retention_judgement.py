"""Retention's judgement of one scanned repository, without storage: what is doomed, and what
goes first. (tests/api/test_retention.py runs the same against Azurite, end to end.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables import TableEntity

from registry.storage.retention import RetentionPolicy, _Repository

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
OLD = NOW - timedelta(days=30)
ENABLED = RetentionPolicy("enabled", 7, "repository")
DISABLED = RetentionPolicy("disabled", 7, "registry")
MARGIN = timedelta(minutes=6)


def row(key: str, written: datetime = OLD, **properties: Any) -> TableEntity:
    entity = TableEntity(RowKey=key, **properties)
    entity._metadata = {"etag": f"W/{key}", "timestamp": written}
    return entity


def repository(*rows: TableEntity, children: dict[str, set[str]] | None = None) -> _Repository:
    scanned = _Repository(rows)
    for digest, named in (children or {}).items():
        scanned.manifests[digest].children = named
    return scanned


def test_a_subject_goes_a_pass_before_its_referrers_and_an_index_before_its_children() -> None:
    scanned = repository(
        row("m:index", mediaType="index"), row("m:child", mediaType="image"),
        row("m:subject", mediaType="image"), row("m:sig", mediaType="image", subject="subject"),
        row("r:subject:sig"),
        children={"index": {"child"}},
    )
    doomed = scanned.doomed(ENABLED, NOW, MARGIN)
    assert doomed == {"index", "child", "subject", "sig"}
    # Were `sig` deleted with `subject` and `subject`'s delete failed (tagged meanwhile), the
    # subject would stay without its signature: referrers wait for a later pass, as children do.
    assert scanned.roots(doomed) == ["index", "subject"]


def test_what_stays_protects_what_it_reaches() -> None:
    scanned = repository(
        row("m:tagged-index", mediaType="index"), row("t:v1", digest="tagged-index"),
        row("m:child", mediaType="image"),
        row("m:subject", mediaType="image"), row("t:v2", digest="subject"),
        row("m:sig", mediaType="image", subject="subject"), row("r:subject:sig"),
        row("m:locked", mediaType="image", deleteEnabled=False),
        row("m:young", NOW - timedelta(days=1), mediaType="image"),
        row("m:fresh-orphan", NOW - timedelta(minutes=1), mediaType="image", subject="gone"),
        row("m:rendition", mediaType="image", renditionOf="child"),
        children={"tagged-index": {"child"}},
    )
    assert scanned.doomed(ENABLED, NOW, MARGIN) == set()


def test_a_tagged_docker_list_keeps_the_sources_of_its_rendition_children() -> None:
    scanned = repository(
        row("m:oci-index", mediaType="index"),
        row("m:oci-child", mediaType="image"),
        row("m:docker-list", mediaType="list"), row("t:stable", digest="docker-list"),
        row("m:docker-child", mediaType="image", renditionOf="oci-child"),
        children={"oci-index": {"oci-child"}, "docker-list": {"docker-child"}},
    )
    assert scanned.doomed(ENABLED, NOW, MARGIN) == {"oci-index"}


def test_orphans_go_whatever_the_policy_and_a_dry_run_foresees_their_referrers() -> None:
    scanned = repository(
        row("m:sig", mediaType="image", subject="deleted"),  # its r: row went with its subject
        row("m:countersig", mediaType="image", subject="sig"), row("r:sig:countersig"),
        row("m:early", mediaType="image", subject="not-pushed-yet"), row("r:not-pushed-yet:early"),
        row("m:untagged", mediaType="image"),
    )
    assert scanned.doomed(DISABLED, NOW, MARGIN) == {"sig"}
    assert scanned.cascade(DISABLED, NOW, MARGIN) == {"sig", "countersig"}
    assert scanned.cascade(ENABLED, NOW, MARGIN) == {"sig", "countersig", "early", "untagged"}
