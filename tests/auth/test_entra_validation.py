"""Entra ID tokens that must not get in, and key rotation that must keep working."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from tests.auth.fake_entra import TENANT, FakeEntra
from tests.conftest import Server


def exchange(server: Server, aad: str) -> httpx.Response:
    return httpx.post(f"{server.url}/oauth2/exchange",
                      data={"grant_type": "access_token", "service": server.host, "access_token": aad})


@pytest.mark.parametrize("case, overrides", [
    ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}),
    ("not yet valid", {"nbf": int(time.time()) + 3600}),
    ("wrong audience", {"aud": "api://someone-else"}),
    ("wrong issuer", {"iss": "https://login.microsoftonline.com/another-tenant/v2.0"}),
    ("issuer of a v1 token in another form", {"iss": f"https://sts.windows.net/{TENANT}"}),
    ("missing oid", {"oid": None}),
    ("another tenant", {"tid": "00000000-1111-2222-3333-444444444444"}),
])
def test_rejected_tokens(auth_server: Server, entra: FakeEntra, case: str, overrides: dict) -> None:
    response = exchange(auth_server, entra.token(["AcrPull"], **overrides))
    assert response.status_code == 401, case
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_wrong_key_and_alg_none(auth_server: Server, entra: FakeEntra) -> None:
    entra.add_key("unpublished", publish=False)
    assert exchange(auth_server, entra.token(["AcrPull"], kid="unpublished")).status_code == 401
    claims = jwt.decode(entra.token(["AcrPull"]), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "key-1"})
    assert exchange(auth_server, unsigned).status_code == 401
    assert exchange(auth_server, "not-a-jwt").status_code == 401


def test_rotated_key_is_fetched(auth_server: Server, entra: FakeEntra) -> None:
    assert exchange(auth_server, entra.token(["AcrPull"])).status_code == 200  # JWKS cached now
    entra.add_key("key-rotated")
    assert exchange(auth_server, entra.token(["AcrPull"], kid="key-rotated")).status_code == 200
