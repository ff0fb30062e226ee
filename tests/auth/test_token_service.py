"""The challenge, the token endpoints and the registry tokens they issue."""

from __future__ import annotations

import base64
import json

import httpx
import jwt

from registry.azurite import Azurite
from tests.auth.fake_entra import FakeEntra
from tests.auth.support import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    NULL_USER,
    access_token,
    bearer,
    cli,
    create_scoped_token,
)
from tests.conftest import Server
from tests.helpers import error_codes, push_image


def test_unauthenticated_requests_get_the_bearer_challenge(auth_server: Server, repo: str) -> None:
    root = httpx.get(f"{auth_server.url}/v2/")
    assert root.status_code == 401
    assert root.headers["WWW-Authenticate"] == (
        f'Bearer realm="{auth_server.url}/oauth2/token",service="{auth_server.host}"'
    )
    manifest = httpx.get(f"{auth_server.url}/v2/{repo}/manifests/latest")
    assert manifest.status_code == 401
    assert error_codes(manifest) == ["UNAUTHORIZED"]
    assert f'scope="repository:{repo}:pull"' in manifest.headers["WWW-Authenticate"]
    upload = httpx.post(f"{auth_server.url}/v2/{repo}/blobs/uploads/")
    assert f'scope="repository:{repo}:pull,push"' in upload.headers["WWW-Authenticate"]


def test_admin_token_grants_what_was_asked(auth_server: Server, repo: str) -> None:
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull,push")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == auth_server.host and claims["iss"] == auth_server.host
    assert claims["access"] == [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
    assert claims["exp"] - claims["iat"] <= 1200
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        assert client.get("/v2/").status_code == 200
        digest, _ = push_image(client, repo, "v1")
        assert client.get(f"/v2/{repo}/manifests/v1").headers["Docker-Content-Digest"] == digest
        # The token names this repository only: another one is challenged as ACR and the CNCF
        # registry do (401, insufficient_scope, the scope to ask for).
        other = client.get(f"/v2/{repo}-other/manifests/v1")
        assert other.status_code == 401
        assert error_codes(other) == ["UNAUTHORIZED"]
        assert 'error="insufficient_scope"' in other.headers["WWW-Authenticate"]
        assert f'scope="repository:{repo}-other:pull"' in other.headers["WWW-Authenticate"]


def test_wrong_password_and_tampered_tokens(auth_server: Server, repo: str) -> None:
    response = httpx.get(f"{auth_server.url}/oauth2/token", params={"scope": f"repository:{repo}:pull"},
                         auth=(ADMIN_USER, "wrong"))
    assert response.status_code == 401
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"][0]["actions"] = ["pull", "push", "delete"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused = httpx.post(f"{auth_server.url}/v2/{repo}/blobs/uploads/",
                         headers=bearer(f"{header}.{forged}.{signature}"))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    other_key = jwt.encode({**claims, "typ": "access"}, b"x" * 32, algorithm="HS256")
    assert httpx.get(f"{auth_server.url}/v2/", headers=bearer(other_key)).status_code == 401


def test_anonymous_token_carries_nothing(auth_server: Server, repo: str) -> None:
    token = access_token(auth_server, None, None, f"repository:{repo}:pull")
    assert jwt.decode(token, options={"verify_signature": False})["access"] == []
    # A caller who forgot to log in is told to authenticate (clients say "authentication required").
    response = httpx.get(f"{auth_server.url}/v2/{repo}/tags/list", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_oauth_post_password_and_refresh_grants(auth_server: Server, repo: str) -> None:
    url = f"{auth_server.url}/oauth2/token"
    first = httpx.post(url, data={"grant_type": "password", "username": ADMIN_USER, "password": ADMIN_PASSWORD,
                                  "service": auth_server.host, "scope": f"repository:{repo}:pull",
                                  "access_type": "offline", "client_id": "test"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["scope"] == f"repository:{repo}:pull"
    refreshed = httpx.post(url, data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                      "service": auth_server.host, "scope": f"repository:{repo}:pull,push"})
    assert refreshed.status_code == 200
    assert refreshed.json()["scope"] == f"repository:{repo}:pull,push"
    for bad in ({"grant_type": "client_credentials"}, {"grant_type": "authorization_code", "code": "x"}, {}):
        response = httpx.post(url, data=bad)
        assert response.status_code == 400, bad
    assert httpx.post(url, data={"grant_type": "refresh_token", "refresh_token": "garbage"}).status_code == 401
    assert httpx.post(f"{auth_server.url}/oauth2/exchange", data={"grant_type": "password"}).status_code == 400


def test_offline_token_and_null_guid_login(auth_server: Server, repo: str) -> None:
    response = httpx.get(f"{auth_server.url}/oauth2/token",
                         params={"scope": f"repository:{repo}:pull", "offline_token": "true"},
                         auth=(ADMIN_USER, ADMIN_PASSWORD))
    refresh = response.json()["refresh_token"]
    token = access_token(auth_server, NULL_USER, refresh, f"repository:{repo}:pull,push")
    access = jwt.decode(token, options={"verify_signature": False})["access"]
    assert access == [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]


def test_scoped_token_lifecycle(auth_server: Server, azurite: Azurite, repo: str) -> None:
    password = create_scoped_token(azurite, "ci-lifecycle", f"{repo}=content/read,content/write")
    token = access_token(auth_server, "ci-lifecycle", password, f"repository:{repo}:pull,push,delete")
    actions = jwt.decode(token, options={"verify_signature": False})["access"][0]["actions"]
    assert actions == ["pull", "push"]  # delete was asked for, not held
    offline = httpx.get(f"{auth_server.url}/oauth2/token", params={"offline_token": "true"},
                        auth=("ci-lifecycle", password)).json()["refresh_token"]
    assert "ci-lifecycle" in cli(azurite, "tokens", "list")
    cli(azurite, "tokens", "revoke", "ci-lifecycle")
    for username, secret in (("ci-lifecycle", password), (NULL_USER, offline)):
        response = httpx.get(f"{auth_server.url}/oauth2/token", auth=(username, secret))
        assert response.status_code == 401, username


def test_entra_exchange_and_refresh(auth_server: Server, entra: FakeEntra, repo: str) -> None:
    for version in (1, 2):
        aad = entra.token(["AcrPush"], version=version)
        response = httpx.post(f"{auth_server.url}/oauth2/exchange",
                              data={"grant_type": "access_token", "service": auth_server.host,
                                    "tenant": "t", "access_token": aad})
        assert response.status_code == 200, response.text
        refresh = response.json()["refresh_token"]
        token = access_token(auth_server, NULL_USER, refresh, f"repository:{repo}:pull,push,delete")
        actions = jwt.decode(token, options={"verify_signature": False})["access"][0]["actions"]
        assert actions == ["pull", "push"]
    # An Entra token may also stand directly as the password of the null-GUID user.
    direct = access_token(auth_server, NULL_USER, entra.token(["AcrPull"]), f"repository:{repo}:pull,push")
    assert jwt.decode(direct, options={"verify_signature": False})["access"][0]["actions"] == ["pull"]
