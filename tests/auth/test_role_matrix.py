"""Each kind of caller may do exactly what README's role table says, and nothing more."""

from __future__ import annotations

import os
import uuid

import httpx
import jwt
import pytest

from registry.azurite import Azurite
from tests.auth.fake_entra import FakeEntra
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, NULL_USER, access_token, bearer, cli, create_scoped_token
from tests.conftest import Server
from tests.helpers import push_blob, push_image, sha256

OPERATIONS = ("pull A", "push A", "delete A", "pull B", "push B", "catalog")
Y, N = True, False
MATRIX = {
    "AcrPull": (Y, N, N, Y, N, Y),
    "AcrPush": (Y, Y, N, Y, Y, Y),
    "AcrDelete": (N, N, Y, N, N, N),
    "Owner": (Y, Y, Y, Y, Y, Y),
    "token A read": (Y, N, N, N, N, N),
    "token A read+write": (Y, Y, N, N, N, N),
    "token A all": (Y, Y, Y, N, N, N),
    "admin": (Y, Y, Y, Y, Y, Y),
    "anonymous": (N, N, N, N, N, N),
}


@pytest.fixture(scope="module")
def repos(auth_server: Server) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    a, b = f"matrix/a{suffix}", f"matrix/b{suffix}"
    token = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{a}:pull,push",
                         f"repository:{b}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        push_image(client, a, "v1")
        push_image(client, b, "v1")
    return a, b


def credentials(kind: str, server: Server, azurite: Azurite, entra: FakeEntra, a: str) -> tuple[str, str] | None:
    if kind in ("AcrPull", "AcrPush", "AcrDelete", "Owner"):
        return NULL_USER, entra.token([kind])
    if kind.startswith("token"):
        actions = {"read": "content/read", "read+write": "content/read,content/write",
                   "all": "content/read,content/write,content/delete,metadata/read"}[kind.split()[-1]]
        name = f"matrix-{uuid.uuid4().hex[:8]}"
        return name, create_scoped_token(azurite, name, f"{a}={actions}")
    if kind == "admin":
        return ADMIN_USER, ADMIN_PASSWORD
    return None


def attempt(client: httpx.Client, operation: str, a: str, b: str) -> bool:
    """True when the registry let the caller through (whatever the outcome after that)."""
    verb, _, which = operation.partition(" ")
    repo = a if which == "A" else b
    if verb == "pull":
        response = client.get(f"/v2/{repo}/manifests/v1")
    elif verb == "push":
        response = client.post(f"/v2/{repo}/blobs/uploads/")
    elif verb == "delete":
        response = client.delete(f"/v2/{repo}/manifests/{sha256(b'absent')}")  # 404 once allowed
    else:
        response = client.get("/v2/_catalog")
    return response.status_code not in (401, 403)


@pytest.mark.parametrize("kind", MATRIX)
def test_role_matrix(kind: str, auth_server: Server, azurite: Azurite, entra: FakeEntra,
                     repos: tuple[str, str]) -> None:
    a, b = repos
    creds = credentials(kind, auth_server, azurite, entra, a)
    scopes = [f"repository:{a}:pull,push,delete", f"repository:{b}:pull,push,delete", "registry:catalog:*"]
    token = access_token(auth_server, *(creds or (None, None)), *scopes)
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        seen = tuple(attempt(client, operation, a, b) for operation in OPERATIONS)
    assert dict(zip(OPERATIONS, seen, strict=True)) == dict(zip(OPERATIONS, MATRIX[kind], strict=True))


def test_mount_needs_pull_on_the_source(auth_server: Server, azurite: Azurite, repos: tuple[str, str]) -> None:
    a, b = repos
    admin = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{b}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(admin)) as client:
        secret = push_blob(client, b, b"only in B")
    name = f"mount-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{a}=content/read,content/write")
    token = access_token(auth_server, name, password, f"repository:{a}:pull,push", f"repository:{b}:pull")
    with httpx.Client(base_url=auth_server.url, headers=bearer(token)) as client:
        response = client.post(f"/v2/{a}/blobs/uploads/", params={"mount": secret, "from": b})
        assert response.status_code == 202  # a plain upload session, not the blob
        assert client.head(f"/v2/{a}/blobs/{secret}").status_code == 404
    # With pull on the source, the same mount succeeds.
    both = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{a}:pull,push",
                        f"repository:{b}:pull")
    with httpx.Client(base_url=auth_server.url, headers=bearer(both)) as client:
        assert client.post(f"/v2/{a}/blobs/uploads/", params={"mount": secret, "from": b}).status_code == 201


def test_mount_without_from_uses_only_repositories_the_token_may_pull(auth_server: Server, azurite: Azurite,
                                                                       repos: tuple[str, str]) -> None:
    a, b = repos
    admin = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{b}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(admin)) as client:
        secret = push_blob(client, b, os.urandom(64))
    only_a = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{a}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(only_a)) as client:
        assert client.post(f"/v2/{a}/blobs/uploads/", params={"mount": secret}).status_code == 202
        assert client.head(f"/v2/{a}/blobs/{secret}").status_code == 404
    with_b = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{a}:pull,push",
                          f"repository:{b}:pull")
    with httpx.Client(base_url=auth_server.url, headers=bearer(with_b)) as client:
        assert client.post(f"/v2/{a}/blobs/uploads/", params={"mount": secret}).status_code == 201
        assert client.head(f"/v2/{a}/blobs/{secret}").status_code == 200


def test_upload_session_belongs_to_its_caller(auth_server: Server, azurite: Azurite,
                                              repos: tuple[str, str]) -> None:
    a, _ = repos
    admin = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{a}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(admin)) as client:
        location = client.post(f"/v2/{a}/blobs/uploads/").headers["Location"]
    name = f"thief-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{a}=content/read,content/write")
    other = access_token(auth_server, name, password, f"repository:{a}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(other)) as client:
        for method in ("GET", "PATCH", "DELETE"):
            assert client.request(method, location, content=b"x" if method == "PATCH" else None).status_code == 404


def test_role_assignments_narrow_an_entra_principal(auth_server: Server, azurite: Azurite, entra: FakeEntra,
                                                   repos: tuple[str, str]) -> None:
    a, b = repos
    object_id = str(uuid.uuid4())
    prefix = a.rsplit("/", 1)[0]
    cli(azurite, "roles", "assign", object_id, "--role", "AcrPull", "--repository", f"{prefix}/*")
    aad = entra.token(["AcrPush"], object_id=object_id)  # registry-wide push, narrowed to pull on matrix/*
    token = access_token(auth_server, NULL_USER, aad, f"repository:{a}:pull,push", "repository:elsewhere:pull",
                         "registry:catalog:*")
    access = jwt.decode(token, options={"verify_signature": False})["access"]
    assert access == [{"type": "repository", "name": a, "actions": ["pull"]}]
    assert cli(azurite, "roles", "remove", object_id, "--repository", f"{prefix}/*") == (
        f"{object_id}: assignment on {prefix}/* removed\n")
    token = access_token(auth_server, NULL_USER, aad, f"repository:{a}:pull,push")
    assert jwt.decode(token, options={"verify_signature": False})["access"][0]["actions"] == ["pull", "push"]


def test_anonymous_pull_when_enabled(anonymous_server: Server, repos: tuple[str, str]) -> None:
    a, _ = repos
    assert httpx.get(f"{anonymous_server.url}/v2/{a}/manifests/v1").status_code == 200
    assert httpx.post(f"{anonymous_server.url}/v2/{a}/blobs/uploads/").status_code == 401
    assert httpx.get(f"{anonymous_server.url}/v2/_catalog").status_code == 401
    token = access_token(anonymous_server, None, None, f"repository:{a}:pull,push")
    actions = jwt.decode(token, options={"verify_signature": False})["access"][0]["actions"]
    assert actions == ["pull"]
