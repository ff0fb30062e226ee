"""The web page's rules over plain HTTP (tests/ui/test_web_page.py drives a browser): who may
sign in and see what, and that what a pusher wrote cannot break a page. Each test here answered
wrongly before the review that found it."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from registry.azurite import Azurite
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, access_token, bearer, cli, create_scoped_token
from tests.conftest import Server
from tests.helpers import OCI_MANIFEST, descriptor, push_blob, push_image, put_manifest


def _admin(server: Server, repo: str) -> httpx.Client:
    token = access_token(server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull,push")
    return httpx.Client(base_url=server.url, headers=bearer(token), timeout=30)


@contextmanager
def _sign_in(server: Server, username: str, password: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        answer = browser.post("/ui/login", data={"username": username, "password": password, "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        yield browser


@pytest.fixture(scope="module")
def repos(auth_server: Server) -> tuple[str, str]:
    prefix = f"uirules{uuid.uuid4().hex[:6]}"
    mine, other = f"{prefix}/my-app", f"{prefix}x/secret"
    for repo in (mine, other):
        with _admin(auth_server, repo) as client:
            push_image(client, repo, "v1")
    return mine, other


def test_sign_in_through_the_form_and_the_cookie_is_no_registry_password(
        auth_server: Server, azurite: Azurite, repos: tuple[str, str]) -> None:
    mine, other = repos
    name = f"ui-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{mine}=content/read")
    with _sign_in(auth_server, name, password) as browser:
        listing = browser.get("/ui/", params={"q": mine.split("/")[0]})
        assert listing.status_code == 200 and f'href="/ui/repo/{mine}"' in listing.text
        assert other not in listing.text
        refused = browser.get(f"/ui/repo/{other}")  # the same answer as for a name that does not exist
        assert refused.status_code == 404 and 'id="tags"' not in refused.text
        cookie = browser.cookies["berth_ui"]
    # The cookie is a refresh token for the page's audience only: docker cannot log in with it.
    refused = httpx.post(f"{auth_server.url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": cookie, "service": auth_server.host,
        "scope": f"repository:{mine}:pull"})
    assert refused.status_code == 401
    wrong = httpx.post(f"{auth_server.url}/ui/login", data={"username": name, "password": "wrong"})
    assert wrong.status_code == 401 and "not accepted" in wrong.text


def test_a_cross_site_sign_in_is_refused(auth_server: Server) -> None:
    forged = httpx.post(f"{auth_server.url}/ui/login", data={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
                        headers={"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"})
    assert forged.status_code == 403 and "berth_ui" not in forged.cookies


def test_a_read_disabled_repository_shows_nothing(auth_server: Server, azurite: Azurite) -> None:
    repo = f"uirules{uuid.uuid4().hex[:6]}/locked"
    with _admin(auth_server, repo) as client:
        digest, _ = push_image(client, repo, "v1")
    cli(azurite, "repo", "update", repo, "--read-enabled", "false")
    with _sign_in(auth_server, ADMIN_USER, ADMIN_PASSWORD) as browser:
        for path in (f"/ui/repo/{repo}", f"/ui/repo/{repo}@{digest}"):
            page = browser.get(path)
            assert page.status_code == 404 and digest.split(":")[1][:12] not in page.text


def test_a_prefix_search_finds_names_with_dashes(auth_server: Server, repos: tuple[str, str]) -> None:
    mine, _ = repos
    with _sign_in(auth_server, ADMIN_USER, ADMIN_PASSWORD) as browser:
        for query in (mine[:-3], mine[:-4], mine):  # ".../my-", ".../my", the whole name
            assert f'href="/ui/repo/{mine}"' in browser.get("/ui/", params={"q": query}).text, query
        assert browser.get("/ui/", params={"q": "te\x00"}).status_code == 200


def test_what_a_pusher_wrote_cannot_break_a_page(auth_server: Server) -> None:
    repo = f"uirules{uuid.uuid4().hex[:6]}/hostile"
    with _admin(auth_server, repo) as client:
        config = json.dumps({"os": "linux", "architecture": "amd64", "created": 12345,
                             "config": {"Entrypoint": 5, "Cmd": {"a": 1}, "Labels": {"<b>x</b>": "<script>"}}}).encode()
        push_blob(client, repo, config)
        layer = os.urandom(64)
        push_blob(client, repo, layer)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                           "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer),
                                      {**descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar",
                                                    b"x"), "size": 10**400, "urls": ["https://example.com/x"]}],
                           "annotations": {"note": "<img src=x onerror=alert(1)>"}}).encode()
        answer = put_manifest(client, repo, "v1", body)
        assert answer.status_code == 201, answer.text  # a foreign layer's size is the pusher's word
        digest = answer.headers["Docker-Content-Digest"]
    with _sign_in(auth_server, ADMIN_USER, ADMIN_PASSWORD) as browser:
        for path in (f"/ui/repo/{repo}", f"/ui/repo/{repo}@{digest}"):
            page = browser.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert "<script>" not in page.text and "<img src=x" not in page.text
            assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_anonymous_pull_shows_a_repository_by_name_but_no_catalog(anonymous_server: Server) -> None:
    repo = f"uirules{uuid.uuid4().hex[:6]}/public"
    with _admin(anonymous_server, repo) as client:
        push_image(client, repo, "v1")
    listing = httpx.get(f"{anonymous_server.url}/ui/")
    assert listing.status_code == 200 and repo not in listing.text and "sign in" in listing.text.lower()
    page = httpx.get(f"{anonymous_server.url}/ui/repo/{repo}")
    assert page.status_code == 200 and "v1" in page.text
