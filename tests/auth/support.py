"""Auth fixtures (loaded by tests/conftest.py) and helpers: fake Entra signing, Berth with BERTH_AUTH=token."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from registry.azurite import PROJECT_ROOT, Azurite
from tests.auth.fake_entra import APP_ID, AUDIENCE, TENANT, FakeEntra
from tests.conftest import Server, start_server, stop_server

ADMIN_USER = "berthadmin"
ADMIN_PASSWORD = "correct-horse-battery-staple"
AUTH_PREFIX = "berthauth"
NULL_USER = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="session")
def entra() -> Iterator[FakeEntra]:
    fake = FakeEntra()
    yield fake
    fake.close()


def auth_settings(azurite: Azurite, entra: FakeEntra, **extra: str) -> dict[str, str]:
    return {
        "BERTH_AUTH": "token",
        "BERTH_TABLE_PREFIX": AUTH_PREFIX,
        "BERTH_TOKEN_SIGNING_KEY": base64.b64encode(b"k" * 32).decode(),
        "BERTH_ADMIN_USER": ADMIN_USER,
        "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "BERTH_ENTRA_TENANT_ID": TENANT,
        "BERTH_ENTRA_AUDIENCE": f"{AUDIENCE},{APP_ID}",
        "BERTH_ENTRA_JWKS_URL": entra.jwks_url,
        "BERTH_ENTRA_JWKS_COOLDOWN_SECONDS": "0",
        **extra,
    }


@pytest.fixture(scope="session")
def auth_server(azurite: Azurite, entra: FakeEntra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = start_server(azurite, tmp_path_factory.mktemp("auth"), **auth_settings(azurite, entra))
    yield instance
    stop_server(instance)


@pytest.fixture(scope="session")
def anonymous_server(azurite: Azurite, entra: FakeEntra,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = auth_settings(azurite, entra, BERTH_ANONYMOUS_PULL="true")
    instance = start_server(azurite, tmp_path_factory.mktemp("anonymous"), **settings)
    yield instance
    stop_server(instance)


def cli(azurite: Azurite, *args: str) -> str:
    """Run `python -m registry ...` against the test storage, as an operator would."""
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "BERTH_TABLE_PREFIX": AUTH_PREFIX}
    result = subprocess.run([sys.executable, "-m", "registry", *args], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def create_scoped_token(azurite: Azurite, name: str, *scopes: str) -> str:
    out = cli(azurite, "tokens", "create", name, *[arg for scope in scopes for arg in ("--scope", scope)])
    return out.strip().splitlines()[-1]


def access_token(server: Server, username: str | None, password: str | None, *scopes: str) -> str:
    auth = (username, password) if username is not None else None
    response = httpx.get(f"{server.url}/oauth2/token", params={"service": server.host, "scope": list(scopes)},
                         auth=auth)
    assert response.status_code == 200, response.text
    return response.json()["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
