"""Auth under attack (issue 9): revocation that sticks, rotation of passwords and signing keys,
clock skew, brute force, malformed credentials, oversized requests, the challenges clients use,
and the audit trail."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from registry.azurite import Azurite
from tests.auth.fake_entra import FakeEntra
from tests.auth.support import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    NULL_USER,
    access_token,
    auth_settings,
    bearer,
    cli,
    create_scoped_token,
)
from tests.conftest import Server, require_tool, start_server, stop_server
from tests.helpers import error_codes, push_blob, push_image

SUITE_KEY = b"k" * 32  # the signing key of `auth_server` (tests/auth/support.py)
NEW_KEY = b"n" * 32


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(scope="module")
def servers(azurite: Azurite, entra: FakeEntra,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Berth instances on the suite's auth storage, each configured as an operator would after a change."""
    tmp = tmp_path_factory.mktemp("hardening")
    configs = {
        # The admin password was changed.
        "new_admin_password": {"BERTH_ADMIN_PASSWORD": "a-new-admin-password"},
        # A signing-key rotation, half-way (new key signs, old still accepted) and done (old retired).
        "rotating": {"BERTH_TOKEN_SIGNING_KEY": f"{b64(NEW_KEY)},{b64(SUITE_KEY)}",
                     "BERTH_REFRESH_TOKEN_TTL_SECONDS": str(24 * 3600)},
        "rotated": {"BERTH_TOKEN_SIGNING_KEY": b64(NEW_KEY)},
        # Two instances with a low failure limit, for brute force (each has its own address memory).
        "guarded": {"BERTH_AUTH_FAILURE_LIMIT": "5"},
        "guarded_peer": {"BERTH_AUTH_FAILURE_LIMIT": "5"},
    }
    started: dict[str, Server] = {}
    try:
        for name, extra in configs.items():
            started[name] = start_server(azurite, tmp, **auth_settings(azurite, entra, **extra))
        yield started
    finally:  # also when one of them fails to start: the others must not outlive the run
        for server in started.values():
            stop_server(server)


def refresh_token_for(server: Server, username: str, password: str) -> str:
    response = httpx.post(f"{server.url}/oauth2/token",
                          data={"grant_type": "password", "username": username, "password": password,
                                "service": server.host, "access_type": "offline"})
    assert response.status_code == 200, response.text
    return response.json()["refresh_token"]


def refresh(server: Server, token: str) -> httpx.Response:
    return httpx.post(f"{server.url}/oauth2/token",
                      data={"grant_type": "refresh_token", "refresh_token": token, "service": server.host})


def test_revoke_then_recreate_does_not_revive_old_refresh_tokens(auth_server: Server, azurite: Azurite,
                                                                 repo: str) -> None:
    name = f"ci-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read")
    old = refresh_token_for(auth_server, name, password)
    assert refresh(auth_server, old).status_code == 200
    cli(azurite, "tokens", "revoke", name)
    create_scoped_token(azurite, name, "prod/*=content/read,content/write,content/delete")
    revived = refresh(auth_server, old)
    assert revived.status_code == 401, revived.text
    assert access_token_refused(auth_server, NULL_USER, old)


def access_token_refused(server: Server, username: str, password: str) -> bool:
    return httpx.get(f"{server.url}/oauth2/token", auth=(username, password)).status_code == 401


def test_rotate_gives_a_new_password_and_ends_old_refresh_tokens(auth_server: Server, azurite: Azurite,
                                                                 repo: str) -> None:
    name = f"ci-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read,content/write")
    old = refresh_token_for(auth_server, name, password)
    new_password = cli(azurite, "tokens", "rotate", name).strip().splitlines()[-1]
    assert new_password != password
    assert refresh(auth_server, old).status_code == 401
    assert access_token_refused(auth_server, name, password)
    token = access_token(auth_server, name, new_password, f"repository:{repo}:pull,push")
    assert jwt.decode(token, options={"verify_signature": False})["access"][0]["actions"] == ["pull", "push"]
    fresh = refresh_token_for(auth_server, name, new_password)
    assert refresh(auth_server, fresh).status_code == 200


def test_admin_refresh_tokens_end_when_the_admin_password_changes(auth_server: Server,
                                                                  servers: dict[str, Server]) -> None:
    old = refresh_token_for(auth_server, ADMIN_USER, ADMIN_PASSWORD)
    assert refresh(auth_server, old).status_code == 200
    changed = servers["new_admin_password"]
    old_on_changed = httpx.post(f"{changed.url}/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": old, "service": auth_server.host})
    assert old_on_changed.status_code == 401
    new = refresh_token_for(changed, ADMIN_USER, "a-new-admin-password")
    assert refresh(changed, new).status_code == 200


def test_a_signing_key_rotates_without_a_cliff(auth_server: Server, servers: dict[str, Server], repo: str) -> None:
    rotating, rotated = servers["rotating"], servers["rotated"]
    # Issued before the rotation, under the old key: still accepted while the old key is.
    old = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull")
    assert httpx.get(f"{auth_server.url}/v2/", headers=bearer(old)).status_code == 200
    old_host = {"Host": auth_server.host}  # a token's audience is the service name it was issued for
    assert httpx.get(f"{rotating.url}/v2/", headers={**bearer(old), **old_host}).status_code == 200
    # Issued under the new key: accepted by both; the old key retired: old tokens refused.
    new = access_token(rotating, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull")
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
    assert httpx.get(f"{rotated.url}/v2/", headers={**bearer(new), "Host": rotating.host}).status_code == 200
    retired = httpx.get(f"{rotated.url}/v2/", headers={**bearer(old), **old_host})
    assert retired.status_code == 401


def test_a_token_from_an_instance_whose_clock_is_ahead_is_accepted(auth_server: Server, repo: str) -> None:
    now = int(time.time()) + 10
    claims = {"iss": auth_server.host, "aud": auth_server.host, "sub": "admin:" + ADMIN_USER, "iat": now,
              "nbf": now, "exp": now + 600, "typ": "access",
              "access": [{"type": "repository", "name": repo, "actions": ["pull"]}]}
    ahead = jwt.encode(claims, SUITE_KEY, algorithm="HS256")
    response = httpx.get(f"{auth_server.url}/v2/{repo}/tags/list", headers=bearer(ahead))
    assert response.status_code == 404  # authorised; the repository simply does not exist
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_entra_refresh_tokens_are_capped(servers: dict[str, Server], entra: FakeEntra) -> None:
    rotating = servers["rotating"]  # its refresh tokens may live a day
    response = httpx.post(f"{rotating.url}/oauth2/exchange",
                          data={"grant_type": "access_token", "service": rotating.host,
                                "access_token": entra.token(["AcrPull"])})
    claims = jwt.decode(response.json()["refresh_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= 3 * 3600
    admin = jwt.decode(refresh_token_for(rotating, ADMIN_USER, ADMIN_PASSWORD), options={"verify_signature": False})
    assert admin["exp"] - admin["iat"] == 24 * 3600


def test_brute_force_is_answered_429_on_every_instance(servers: dict[str, Server], azurite: Azurite,
                                                       repo: str) -> None:
    guarded, peer = servers["guarded"], servers["guarded_peer"]
    name = f"bf-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read")
    statuses = [httpx.get(f"{guarded.url}/oauth2/token", auth=(name, f"guess-{i}")).status_code for i in range(8)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    refused = httpx.get(f"{guarded.url}/oauth2/token", auth=(name, password))  # right, but too late
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert error_codes(refused) == ["TOOMANYREQUESTS"]
    # Another instance, which has never seen this client, refuses the name too (counted in storage).
    elsewhere = httpx.get(f"{peer.url}/oauth2/token", auth=(name, password))
    assert elsewhere.status_code == 429
    # A caller with other credentials is not locked out on the peer.
    assert httpx.get(f"{peer.url}/oauth2/token", auth=(ADMIN_USER, ADMIN_PASSWORD)).status_code == 200


@pytest.mark.parametrize("username", ["é", "a/b", "x" * 5000, "t\u00e9st", "../etc", " ", "a:b"])
def test_malformed_user_names_are_401(auth_server: Server, username: str) -> None:
    encoded = base64.b64encode(f"{username}:secret".encode()).decode()
    response = httpx.get(f"{auth_server.url}/oauth2/token", headers={"Authorization": f"Basic {encoded}"})
    assert response.status_code == 401, response.text
    form = httpx.post(f"{auth_server.url}/oauth2/token",
                      data={"grant_type": "password", "username": username, "password": "secret"})
    assert form.status_code == 401, form.text


@pytest.mark.parametrize("header", ["Basic", "Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
                                    "Basic " + base64.b64encode(b"nocolon").decode()])
def test_malformed_basic_credentials_are_401(auth_server: Server, header: str) -> None:
    response = httpx.get(f"{auth_server.url}/oauth2/token", headers={"Authorization": header})
    assert response.status_code == 401


def send_raw(server: Server, start: bytes, pieces: Iterator[bytes]) -> bytes:
    """Send a request by hand, piece by piece, and return the start of the answer (b"" if the
    server closed the connection before the sender was done and before anything came back)."""
    host, port = server.host.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(start)
        try:
            for piece in pieces:
                sock.sendall(piece)
            return sock.recv(200)
        except (BrokenPipeError, ConnectionResetError):
            return b""


def test_an_oversized_request_head_is_refused(auth_server: Server) -> None:
    header = (b"a" * 65536 for _ in range(16))  # 1 MiB of one header
    answer = send_raw(auth_server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ", iter([*header, b"\r\n\r\n"]))
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer
    assert httpx.get(f"{auth_server.url}/v2/").status_code == 401  # and it still serves


def test_insufficient_scope_is_a_401_challenge_naming_what_to_ask_for(auth_server: Server, repo: str) -> None:
    pull_only = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull")
    with httpx.Client(base_url=auth_server.url) as client:
        elsewhere = client.get(f"/v2/{repo}-else/tags/list", headers=bearer(pull_only))
        assert elsewhere.status_code == 401
        challenge = elsewhere.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in challenge and f'scope="repository:{repo}-else:pull"' in challenge
        # A token for this repository with less than the request needs: the challenge is the same,
        # with 403 (oras-py asks for a new token on 403 only; see registry/auth/authorizer.py).
        upload = client.post(f"/v2/{repo}/blobs/uploads/", headers=bearer(pull_only))
        assert upload.status_code == 403
        assert f'scope="repository:{repo}:pull,push"' in upload.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in upload.headers["WWW-Authenticate"]


def test_a_mount_challenge_names_the_source_and_its_token_mounts(auth_server: Server, repo: str) -> None:
    source, target = repo, f"{repo}/copy"
    admin = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{source}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(admin)) as client:
        digest = push_blob(client, source, b"mounted across repositories")
    mount = f"/v2/{target}/blobs/uploads/"
    challenged = httpx.post(f"{auth_server.url}{mount}", params={"mount": digest, "from": source})
    assert challenged.status_code == 401
    scope = challenged.headers["WWW-Authenticate"].split('scope="', 1)[1].split('"', 1)[0]
    assert scope.split() == [f"repository:{target}:pull,push", f"repository:{source}:pull"]
    exact = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, *scope.split())
    mounted = httpx.post(f"{auth_server.url}{mount}", params={"mount": digest, "from": source},
                         headers=bearer(exact))
    assert mounted.status_code == 201, mounted.text


def test_a_star_scope_grants_what_the_caller_holds(auth_server: Server, azurite: Azurite, repo: str) -> None:
    admin = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:*")
    actions = jwt.decode(admin, options={"verify_signature": False})["access"][0]["actions"]
    assert {"pull", "push", "delete"} <= set(actions)
    name = f"ro-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read")
    reader = access_token(auth_server, name, password, f"repository:{repo}:*")
    assert jwt.decode(reader, options={"verify_signature": False})["access"][0]["actions"] == ["pull"]


def test_skopeo_delete_with_the_admin_user(auth_server: Server, repo: str, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    admin = access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull,push")
    with httpx.Client(base_url=auth_server.url, headers=bearer(admin)) as client:
        push_image(client, repo, "doomed")
    import subprocess

    result = subprocess.run([skopeo, "delete", "--tls-verify=false", "--creds", f"{ADMIN_USER}:{ADMIN_PASSWORD}",
                             f"docker://{auth_server.host}/{repo}:doomed"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    gone = httpx.get(f"{auth_server.url}/v2/{repo}/manifests/doomed", headers=bearer(admin))
    assert gone.status_code == 404


def test_authentication_decisions_are_audited(auth_server: Server, repo: str) -> None:
    marker = f"audit-{uuid.uuid4().hex[:8]}"
    httpx.get(f"{auth_server.url}/oauth2/token", auth=(marker, "wrong"))
    access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, f"repository:{repo}:pull")
    deadline = time.monotonic() + 10
    records: list[dict] = []
    while time.monotonic() < deadline:
        records = [json.loads(line.split("audit ", 1)[1]) for line in auth_server.log.read_text().splitlines()
                   if "berth.audit" in line and "audit {" in line]
        if any(r["event"] == "token.issued" and f"repository:{repo}:pull" in r.get("granted", []) for r in records):
            break
        time.sleep(0.2)
    issued = [r for r in records if r["event"] == "token.issued" and f"repository:{repo}:pull" in r.get("granted", [])]
    assert issued and issued[-1]["principal"] == f"admin:{ADMIN_USER}" and issued[-1]["address"]
    assert any(r["event"] == "token.denied" for r in records)


# --- found by review: what the first version of the hardening let through ---------------------

def test_a_burst_of_parallel_guesses_is_counted_as_it_arrives(servers: dict[str, Server], azurite: Azurite,
                                                              repo: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    guarded = servers["guarded"]
    name = f"burst-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read")

    def guess(i: int) -> int:
        return httpx.get(f"{guarded.url}/oauth2/token", auth=(name, f"guess-{i}"), timeout=60).status_code

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(guess, range(24)))
    assert statuses.count(401) <= 5 and statuses.count(429) >= 19, statuses
    assert httpx.get(f"{guarded.url}/oauth2/token", auth=(name, password)).status_code == 429


def test_renewing_an_entra_refresh_token_does_not_extend_it(servers: dict[str, Server], entra: FakeEntra) -> None:
    rotating = servers["rotating"]
    first = httpx.post(f"{rotating.url}/oauth2/exchange",
                       data={"grant_type": "access_token", "service": rotating.host,
                             "access_token": entra.token(["AcrPush"])}).json()["refresh_token"]
    time.sleep(1.1)
    renewed = httpx.post(f"{rotating.url}/oauth2/token",
                         data={"grant_type": "refresh_token", "refresh_token": first, "service": rotating.host,
                               "access_type": "offline"}).json()["refresh_token"]
    before, after = (jwt.decode(t, options={"verify_signature": False}) for t in (first, renewed))
    assert after["until"] == before["until"] and after["exp"] <= before["until"]


def test_chunked_trailers_cannot_grow_the_request_head(auth_server: Server) -> None:
    trailers = (b"".join(b"X-T%d-%d: %s\r\n" % (i, j, b"t" * 1000) for j in range(64)) for i in range(64))
    start = b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
    answer = send_raw(auth_server, start, iter([*trailers, b"\r\n"]))  # 4 MiB of trailer lines
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer
    assert httpx.get(f"{auth_server.url}/v2/").status_code == 401


def test_forwarded_for_is_not_trusted_without_a_proxy_in_front(auth_server: Server) -> None:
    marker = f"xff-{uuid.uuid4().hex[:8]}"
    httpx.get(f"{auth_server.url}/oauth2/token", auth=(marker, "wrong"), headers={"X-Forwarded-For": "203.0.113.9"})
    record = audit_record(auth_server, lambda r: r.get("name") == marker)
    assert record["event"] == "token.denied" and record["address"] == "127.0.0.1"


def audit_record(server: Server, wanted: object) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in reversed(server.log.read_text().splitlines()):
            if "berth.audit" in line and "audit {" in line:
                record = json.loads(line.split("audit ", 1)[1])
                if wanted(record):  # type: ignore[operator]
                    return record
        time.sleep(0.2)
    raise AssertionError("no such audit record")


def test_audit_records_name_the_account_and_stay_short(auth_server: Server, repo: str) -> None:
    scopes = [f"repository:{repo}/{i}:pull" for i in range(30)]
    access_token(auth_server, ADMIN_USER, ADMIN_PASSWORD, *scopes)
    issued = audit_record(auth_server, lambda r: r["event"] == "token.issued" and r.get("requested_more") == 10)
    assert list(issued)[:2] == ["event", "principal"] and len(issued["requested"]) == 20
    too_many = httpx.get(f"{auth_server.url}/oauth2/token", auth=(ADMIN_USER, ADMIN_PASSWORD),
                         params={"scope": [f"repository:{repo}/{i}:pull" for i in range(101)]})
    assert too_many.status_code == 400


def test_refresh_tokens_from_before_generations_are_refused(auth_server: Server, azurite: Azurite,
                                                            repo: str) -> None:
    name = f"old-{uuid.uuid4().hex[:8]}"
    create_scoped_token(azurite, name, f"{repo}=content/read")
    now = int(time.time())
    legacy = jwt.encode({"iss": auth_server.host, "aud": auth_server.host, "sub": name, "iat": now, "nbf": now,
                         "exp": now + 600, "typ": "refresh", "kind": "token"}, SUITE_KEY, algorithm="HS256")
    assert refresh(auth_server, legacy).status_code == 401


def test_a_token_from_before_generations_gets_one_at_its_next_login(auth_server: Server, azurite: Azurite,
                                                                    repo: str) -> None:
    import hashlib
    import secrets as random

    from azure.data.tables import TableServiceClient

    from tests.auth.support import AUTH_PREFIX

    name, password = f"legacy-{uuid.uuid4().hex[:8]}", random.token_urlsafe(32)
    salt = random.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    table = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"{AUTH_PREFIX}auth")
    encoded = f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    table.create_entity({"PartitionKey": "token", "RowKey": name, "enabled": True,
                         "hash": f"scrypt$16384$8$1${encoded}", "scopes": json.dumps({repo: ["content/read"]})})
    fresh = refresh_token_for(auth_server, name, password)  # a scrypt hash still verifies
    assert jwt.decode(fresh, options={"verify_signature": False})["gen"]
    assert refresh(auth_server, fresh).status_code == 200
    row = table.get_entity("token", name)
    assert row["hash"].startswith("sha256$") and row["generation"]


def test_old_failed_login_records_are_purged(azurite: Azurite) -> None:
    from azure.data.tables import TableServiceClient

    from tests.auth.support import AUTH_PREFIX

    table = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"{AUTH_PREFIX}auth")
    partition = f"failures:{uuid.uuid4().hex}"
    old = f"{int((time.time() - 3600) * 1000):015d}-0000"
    table.create_entity({"PartitionKey": partition, "RowKey": old})
    assert "failed-login records" in cli(azurite, "purge-uploads")
    assert list(table.query_entities("PartitionKey eq @pk", parameters={"pk": partition})) == []
