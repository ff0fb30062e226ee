"""Who may use the ACR metadata API (/acr/v1): reads need `metadata_read` on the repository,
deletes `delete`, the catalog `registry:catalog:*`, as in ACR."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from registry.azurite import Azurite
from tests.auth.fake_entra import FakeEntra
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, NULL_USER, access_token, bearer, create_scoped_token
from tests.conftest import Server
from tests.helpers import push_image

OPERATIONS = ("read tags", "read repository", "read manifests", "delete tag", "catalog", "lock tag")
Y, N = True, False
MATRIX = {
    "AcrPull": (Y, Y, Y, N, Y, N),
    "AcrPush": (Y, Y, Y, N, Y, Y),
    "AcrDelete": (Y, Y, Y, Y, N, N),
    "Owner": (Y, Y, Y, Y, Y, Y),
    "token content/read": (N, N, N, N, N, N),
    "token content/read,metadata/read": (Y, Y, Y, N, N, N),
    "token content/delete": (N, N, N, Y, N, N),
    "token metadata/read,metadata/write": (Y, Y, Y, N, N, Y),
    "admin": (Y, Y, Y, Y, Y, Y),
    "anonymous": (N, N, N, N, N, N),
}


@pytest.fixture(scope="module")
def repo(auth_server: Server) -> str:
    name = f"acrauth/r{uuid.uuid4().hex[:8]}"
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{name}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        push_image(client, name, "v1")
    return name


def credentials(kind: str, azurite: Azurite, entra: FakeEntra, repo: str) -> tuple[str | None, str | None]:
    if kind in ("AcrPull", "AcrPush", "AcrDelete", "Owner"):
        return NULL_USER, entra.token([kind])
    if kind.startswith("token "):
        name = f"acr-{uuid.uuid4().hex[:8]}"
        return name, create_scoped_token(azurite, name, f"{repo}={kind.split()[1]}")
    if kind == "admin":
        return ADMIN_USER, ADMIN_PASSWORD
    return None, None


def attempt(client: httpx.Client, operation: str, repo: str) -> bool:
    """True when the registry let the caller through (whatever the outcome after that)."""
    path = {
        "read tags": f"/acr/v1/{repo}/_tags",
        "read repository": f"/acr/v1/{repo}",
        "read manifests": f"/acr/v1/{repo}/_manifests",
        "delete tag": f"/acr/v1/{repo}/_tags/absent",  # 404 TAG_UNKNOWN once allowed
        "catalog": "/acr/v1/_catalog",
        "lock tag": f"/acr/v1/{repo}/_tags/absent",  # PATCH: 404 TAG_UNKNOWN once allowed
    }[operation]
    method = "DELETE" if operation.startswith("delete") else "PATCH" if operation == "lock tag" else "GET"
    response = client.request(method, path, json={"writeEnabled": False} if method == "PATCH" else None)
    return response.status_code not in (401, 403)


@pytest.mark.parametrize("kind", MATRIX)
def test_metadata_role_matrix(kind: str, auth_server: Server, azurite: Azurite, entra: FakeEntra,
                              repo: str) -> None:
    user, password = credentials(kind, azurite, entra, repo)
    token = access_token(auth_server, user, password, f"repository:{repo}:metadata_read,metadata_write,delete",
                         "registry:catalog:*")
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        seen = tuple(attempt(client, operation, repo) for operation in OPERATIONS)
    assert dict(zip(OPERATIONS, seen, strict=True)) == dict(zip(OPERATIONS, MATRIX[kind], strict=True))


def test_challenges_name_the_acr_actions(auth_server: Server, repo: str) -> None:
    for method, path, scope in (
        ("GET", f"/acr/v1/{repo}/_tags", f"repository:{repo}:metadata_read"),
        ("GET", f"/acr/v1/{repo}/_manifests/sha256:{'0' * 64}", f"repository:{repo}:metadata_read"),
        ("DELETE", f"/acr/v1/{repo}", f"repository:{repo}:delete"),
        ("GET", "/acr/v1/_catalog", "registry:catalog:*"),
    ):
        response = httpx.request(method, f"{auth_server.url}{path}")
        assert response.status_code == 401
        assert re.search(f'scope="{re.escape(scope)}"', response.headers["WWW-Authenticate"]), path


def test_a_client_that_asks_for_the_challenged_scope_reads(auth_server: Server, entra: FakeEntra,
                                                           repo: str) -> None:
    challenge = httpx.get(f"{auth_server.url}/acr/v1/{repo}/_tags").headers["WWW-Authenticate"]
    scope = re.search(r'scope="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    token = access_token(auth_server, NULL_USER, entra.token(["AcrPull"]), scope)
    response = httpx.get(f"{auth_server.url}/acr/v1/{repo}/_tags", headers=bearer(token))
    assert response.status_code == 200 and [t["name"] for t in response.json()["tags"]] == ["v1"]


def test_a_pull_token_neither_reads_metadata_nor_deletes(auth_server: Server, repo: str) -> None:
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull")
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        for method, path in (("DELETE", f"/acr/v1/{repo}/_tags/v1"), ("DELETE", f"/acr/v1/{repo}"),
                             ("GET", f"/acr/v1/{repo}/_tags")):
            response = client.request(method, path)
            assert response.status_code == 403, path  # the token grants a lesser part of the resource
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200  # still there
