"""`python -m registry repo|tags|manifests`: what the ACR metadata API answers, printed as az acr does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from registry.azurite import PROJECT_ROOT, Azurite
from tests.conftest import CONTAINER, TABLE_PREFIX
from tests.helpers import push_image, put_manifest


def run(azurite: Azurite, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI against the storage the `server` fixture uses, as an operator would run it."""
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "BERTH_TABLE_PREFIX": TABLE_PREFIX, "BERTH_BLOB_CONTAINER": CONTAINER,
           "BERTH_REPOSITORY_DELETE_SETTLE_SECONDS": "1"}
    return subprocess.run([sys.executable, "-m", "registry", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def ok(azurite: Azurite, *args: str) -> str:
    result = run(azurite, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_lists_print_what_the_api_answers(azurite: Azurite, client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "v2")
    push_image(client, repo, "v1")
    assert put_manifest(client, repo, "latest", body).status_code == 201

    tags = json.loads(ok(azurite, "tags", "list", repo))
    assert tags == client.get(f"/acr/v1/{repo}/_tags").json()["tags"]
    assert [t["name"] for t in tags] == ["latest", "v1", "v2"]
    newest = json.loads(ok(azurite, "tags", "list", repo, "--orderby", "timedesc"))
    assert [t["name"] for t in newest] == ["latest", "v1", "v2"] and newest[0]["digest"] == digest
    assert [t["name"] for t in json.loads(ok(azurite, "tags", "list", repo, "--orderby", "timeasc"))] == \
        ["v2", "v1", "latest"]

    manifests = json.loads(ok(azurite, "manifests", "list", repo))
    assert manifests == client.get(f"/acr/v1/{repo}/_manifests").json()["manifests"]
    assert next(m for m in manifests if m["digest"] == digest)["tags"] == ["latest", "v2"]

    shown = json.loads(ok(azurite, "repo", "show", repo))
    api = client.get(f"/acr/v1/{repo}").json()
    assert {**shown, "registry": api["registry"]} == api
    assert shown["manifestCount"] == 2 and shown["tagCount"] == 3

    table = ok(azurite, "tags", "list", repo, "--output", "table").splitlines()
    assert table[0].split() == ["Name", "Digest", "LastUpdate"] and table[2].split()[:2] == ["latest", digest]
    assert "--orderby" in ok(azurite, "manifests", "list", "--help")


def test_bad_names_and_unknown_repositories(azurite: Azurite, repo: str) -> None:
    for command in (("repo", "show"), ("tags", "list"), ("manifests", "list"), ("repo", "delete")):
        bad = run(azurite, *command, "Not/A_Name")
        assert bad.returncode == 2 and "invalid repository name" in bad.stderr
        unknown = run(azurite, *command, repo, *(("--yes",) if command[1] == "delete" else ()))
        assert unknown.returncode == 1 and f"repository {repo} is not known" in unknown.stderr


def test_repo_delete(azurite: Azurite, client: httpx.Client, repo: str) -> None:
    digest, _ = push_image(client, repo, "v1")
    unconfirmed = run(azurite, "repo", "delete", repo)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200  # nothing happened
    deleted = json.loads(ok(azurite, "repo", "delete", repo, "--yes"))
    assert deleted == {"manifestsDeleted": [digest], "tagsDeleted": ["v1"]}
    assert client.get(f"/v2/{repo}/tags/list").status_code == 404
    assert run(azurite, "repo", "show", repo).returncode == 1


def test_repo_update_locks_and_unlocks(azurite: Azurite, client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "prod")
    tag = json.loads(ok(azurite, "repo", "update", repo, "--tag", "prod", "--write-enabled", "false"))
    assert tag["name"] == "prod" and tag["changeableAttributes"]["writeEnabled"] is False
    other = push_image(client, repo, "other")[1]
    assert put_manifest(client, repo, "prod", other).status_code == 405
    manifest = json.loads(ok(azurite, "repo", "update", repo, "--digest", digest, "--delete-enabled", "false"))
    assert manifest["changeableAttributes"]["deleteEnabled"] is False
    repository = json.loads(ok(azurite, "repo", "update", repo, "--list-enabled", "false"))
    assert repository["changeableAttributes"]["listEnabled"] is False
    assert repo not in client.get("/v2/_catalog", params={"n": 1000, "last": repo[:-1]}).json()["repositories"]
    ok(azurite, "repo", "update", repo, "--list-enabled", "true")
    ok(azurite, "repo", "update", repo, "--tag", "prod", "--write-enabled", "true")
    assert put_manifest(client, repo, "prod", other).status_code == 201
    nothing = run(azurite, "repo", "update", repo)
    assert nothing.returncode == 1 and "nothing to update" in nothing.stderr
    bad = run(azurite, "repo", "update", repo, "--write-enabled", "maybe")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    unknown = run(azurite, "repo", "update", repo, "--tag", "absent", "--write-enabled", "false")
    assert unknown.returncode == 1 and "absent" in unknown.stderr
