"""Real clients log in the ways users do: admin user, scoped token, null GUID + refresh token."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import uuid
from pathlib import Path

import httpx
import oras.client
import pytest

from registry.azurite import Azurite
from tests.auth.fake_entra import FakeEntra
from tests.auth.support import ADMIN_PASSWORD, ADMIN_USER, NULL_USER, create_scoped_token
from tests.clients.layouts import image_layout, multiarch_layout, read_blob
from tests.conftest import Server, require_tool


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def test_skopeo_with_admin_scoped_token_and_refresh_token(auth_server: Server, azurite: Azurite,
                                                          entra: FakeEntra, repo: str, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    pushed = image_layout(tmp_path / "src", "v1")
    source = f"oci:{tmp_path / 'src'}:v1"
    target = f"docker://{auth_server.host}/{repo}:v1"
    # Without credentials: refused.
    refused = run(skopeo, "copy", "--dest-tls-verify=false", source, target, check=False)
    assert refused.returncode != 0
    run(skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", f"{ADMIN_USER}:{ADMIN_PASSWORD}", source, target)
    # A CI token that may read this repository only.
    name = f"ci-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read")
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", "--creds", f"{name}:{password}", target).stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed
    denied = run(skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", f"{name}:{password}", source,
                 f"docker://{auth_server.host}/{repo}:v2", check=False)
    assert denied.returncode != 0
    # A managed identity's way in: Entra token -> /oauth2/exchange -> refresh token as the password.
    refresh = httpx.post(f"{auth_server.url}/oauth2/exchange",
                         data={"grant_type": "access_token", "service": auth_server.host,
                               "access_token": entra.token(["AcrPull"])}).json()["refresh_token"]
    out = tmp_path / "pulled"
    run(skopeo, "copy", "--src-tls-verify=false", "--src-creds", f"{NULL_USER}:{refresh}", target, f"oci:{out}:v1")
    assert (out / "index.json").exists()


def test_podman_login_push_pull(auth_server: Server, repo: str, tmp_path: Path) -> None:
    podman = require_tool("podman")
    runroot = tempfile.mkdtemp(prefix="berth-run-", dir="/tmp")
    flags = ["--storage-driver", "vfs", "--root", str(tmp_path / "storage"), "--runroot", runroot]
    authfile = str(tmp_path / "auth.json")
    image_layout(tmp_path / "src", "v1")
    target = f"{auth_server.host}/{repo}:v1"
    bad = run(podman, *flags, "login", "--tls-verify=false", "--authfile", authfile, "-u", ADMIN_USER,
              "-p", "wrong", auth_server.host, check=False)
    assert bad.returncode != 0
    run(podman, *flags, "login", "--tls-verify=false", "--authfile", authfile, "-u", ADMIN_USER,
        "-p", ADMIN_PASSWORD, auth_server.host)
    image_id = run(podman, *flags, "pull", f"oci:{tmp_path / 'src'}:v1").stdout.split()[-1]
    run(podman, *flags, "push", "--tls-verify=false", "--authfile", authfile, image_id, f"docker://{target}")
    run(podman, *flags, "rmi", "--all")
    pulled = run(podman, *flags, "pull", "--tls-verify=false", "--authfile", authfile, target).stdout.split()[-1]
    assert pulled == image_id
    subprocess.run(["rm", "-rf", runroot], check=False)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_oras_with_scoped_token(auth_server: Server, azurite: Azurite, repo: str, workdir: Path) -> None:
    name = f"oras-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read,content/write")
    client = oras.client.OrasClient(hostname=auth_server.host, insecure=True)
    client.auth.set_basic_auth(name, password)  # what oras login does, minus writing docker config
    (workdir / "artifact.txt").write_text("signed, sealed, delivered\n")
    assert client.push(target=f"{auth_server.host}/{repo}:a1", files=["artifact.txt"]).status_code == 201
    pulled = client.pull(target=f"{auth_server.host}/{repo}:a1", outdir=str(workdir / "out"))
    assert Path(pulled[0]).read_text() == "signed, sealed, delivered\n"


def test_ctr_with_credentials(containerd: list[str], auth_server: Server, repo: str,
                              tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    index_digest = multiarch_layout(tmp_path / "src", "multi")
    source = f"{auth_server.host}/{repo}:multi"
    run(skopeo, "copy", "--all", "--dest-tls-verify=false", "--dest-creds", f"{ADMIN_USER}:{ADMIN_PASSWORD}",
        f"oci:{tmp_path / 'src'}:multi", f"docker://{source}")
    user = ["--user", f"{ADMIN_USER}:{ADMIN_PASSWORD}"]
    refused = subprocess.run([*containerd, "images", "pull", "--plain-http", source], capture_output=True)
    assert refused.returncode != 0
    run(*containerd, "images", "pull", "--plain-http", "--all-platforms", *user, source)
    run(*containerd, "images", "push", "--plain-http", *user, f"{auth_server.host}/{repo}/pushed:multi", source)
    token = httpx.get(f"{auth_server.url}/oauth2/token", params={"scope": f"repository:{repo}/pushed:pull"},
                      auth=(ADMIN_USER, ADMIN_PASSWORD)).json()["token"]
    pushed = httpx.get(f"{auth_server.url}/v2/{repo}/pushed/manifests/multi",
                       headers={"Authorization": f"Bearer {token}"})
    assert "sha256:" + hashlib.sha256(pushed.content).hexdigest() == index_digest


def test_docker_cli_login_and_manifest_inspect(auth_server: Server, repo: str, tmp_path: Path) -> None:
    docker = require_tool("docker")
    skopeo = require_tool("skopeo")
    pushed = image_layout(tmp_path / "src", "v1")
    run(skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", f"{ADMIN_USER}:{ADMIN_PASSWORD}",
        f"oci:{tmp_path / 'src'}:v1", f"docker://{auth_server.host}/{repo}:v1")
    config = str(tmp_path / "docker-config")
    bad = run(docker, "--config", config, "login", auth_server.host, "-u", ADMIN_USER, "-p", "wrong", check=False)
    assert bad.returncode != 0
    login = subprocess.run([docker, "--config", config, "login", auth_server.host, "-u", ADMIN_USER,
                            "--password-stdin"], input=ADMIN_PASSWORD, capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    # docker keeps the refresh token (identitytoken) we issued, not the password.
    saved = json.loads((tmp_path / "docker-config" / "config.json").read_text())["auths"][auth_server.host]
    assert saved.get("identitytoken") and ADMIN_PASSWORD not in json.dumps(saved)
    inspected = run(docker, "--config", config, "manifest", "inspect", "--insecure",
                    f"{auth_server.host}/{repo}:v1").stdout
    assert json.loads(inspected) == json.loads(read_blob(tmp_path / "src", pushed))


def test_skopeo_mounts_across_repositories_with_a_scoped_token(auth_server: Server, azurite: Azurite, repo: str,
                                                               tmp_path: Path) -> None:
    """A copy between two repositories of this registry mounts the layers (201) when the token
    may read the source: the client asks for the scopes the mount challenge names."""
    skopeo = require_tool("skopeo")
    image_layout(tmp_path / "src", "v1")
    source, target = f"docker://{auth_server.host}/{repo}:v1", f"docker://{auth_server.host}/{repo}/copy:v1"
    name = f"mover-{uuid.uuid4().hex[:8]}"
    password = create_scoped_token(azurite, name, f"{repo}=content/read,content/write",
                                   f"{repo}/copy=content/read,content/write")
    creds = f"{name}:{password}"
    run(skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{tmp_path / 'src'}:v1", source)
    run(skopeo, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", creds,
        "--dest-creds", creds, source, target)
    log = auth_server.log.read_text()
    mounted = [json.loads(line.split("audit ", 1)[1]) for line in log.splitlines() if "audit {" in line]
    granted = [set(r.get("granted", [])) for r in mounted if r["event"] == "token.issued"]
    assert any(f"repository:{repo}:pull" in g and f"repository:{repo}/copy:pull,push" in g for g in granted), (
        "no token carried pull on the source and push on the target")
    manifest = json.loads(run(skopeo, "inspect", "--raw", "--tls-verify=false", "--creds", creds, target).stdout)
    for layer in manifest["layers"]:
        response = httpx.head(f"{auth_server.url}/v2/{repo}/copy/blobs/{layer['digest']}",
                              headers={"Authorization": "Bearer " + _token(auth_server, creds, f"{repo}/copy")})
        assert response.status_code == 200


def _token(server: Server, creds: str, repository: str) -> str:
    user, password = creds.split(":", 1)
    response = httpx.get(f"{server.url}/oauth2/token", params={"scope": f"repository:{repository}:pull"},
                         auth=(user, password))
    return response.json()["token"]
