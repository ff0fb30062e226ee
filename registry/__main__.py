"""Berth's command line: `python -m registry serve [--host 127.0.0.1] [--port 5000]`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import re
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.core.exceptions import ResourceExistsError

from registry.api.http import Context
from registry.azurite import PROJECT_ROOT, Azurite
from registry.settings import Settings, SettingsError, load_settings


def local_data(settings: Settings) -> Path:
    """Where local runs keep Azurite's data and generated secrets (relative: to the project)."""
    return PROJECT_ROOT / settings.local_data_dir


def local_signing_key(settings: Settings) -> bytes:
    """For local runs: a token-signing key generated once and kept in the local data folder."""
    path = local_data(settings) / "token-signing-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        path.chmod(0o600)
    return base64.b64decode(path.read_text())


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from registry.app import BerthApplication
    from registry.serving import MAX_CONNECTIONS, MAX_HEAD_BYTES, head_limited_protocol

    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"berth: {error}", file=sys.stderr)
        return 2
    if settings.auth == "token" and not settings.token_signing_keys:
        settings = replace(settings, token_signing_keys=(local_signing_key(settings),))
    azurite = None
    if not settings.storage_configured:
        data = local_data(settings) / "azurite"
        azurite = Azurite(location=data).start()
        settings = settings.with_storage(azurite.connection_string)
        (local_data(settings) / "storage-connection").write_text(azurite.connection_string)
        print(f"berth: started Azurite (blob :{azurite.blob_port}, table :{azurite.table_port}), data in {data}")
    print(f"berth: registry at http://{args.host}:{args.port}/v2/ (blob delivery: {settings.blob_delivery})")
    if settings.auth == "none":
        print("berth: BERTH_AUTH=none: anyone who reaches this address may push, pull and delete")
    elif settings.admin_user:
        print(f"berth: log in as the admin user: podman login --tls-verify=false -u {settings.admin_user} "
              f"{args.host}:{args.port}  (password: $BERTH_ADMIN_PASSWORD)")
    else:
        print("berth: create a login with: python -m registry tokens create NAME --scope 'REPO=content/read'")
    sys.stdout.flush()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler it found:
    # make that handler an exit, so the `finally` below still stops Azurite.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            BerthApplication(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_keep_alive=30,
            http=head_limited_protocol(),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            limit_concurrency=MAX_CONNECTIONS,
            # Who is calling is decided by BERTH_TRUSTED_PROXY_HOPS alone, not by uvicorn's own
            # trust of X-Forwarded-For from loopback peers.
            proxy_headers=False,
        )
    finally:
        if azurite is not None:
            (local_data(settings) / "storage-connection").unlink(missing_ok=True)
            azurite.stop()
    return 0


def _answers(connection_string: str) -> bool:
    """Whether the Azurite a (possibly stale) connection string names is still listening."""
    match = re.search(r"TableEndpoint=https?://([^:/;]+):(\d+)", connection_string)
    if not match:
        return False
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=0.5).close()
    except OSError:
        return False
    return True


@contextmanager
def storage_settings() -> Iterator[Settings]:
    """Settings with storage: configured, or the local `serve`'s Azurite, or one started here."""
    settings = replace(load_settings(), auth="none")
    if settings.storage_configured:
        yield settings
    elif (local := local_data(settings) / "storage-connection").exists() and _answers(local.read_text()):
        yield settings.with_storage(local.read_text())
    else:
        with Azurite(location=local_data(settings) / "azurite") as azurite:
            yield settings.with_storage(azurite.connection_string)


def with_store(work: Callable[[Context], Awaitable[int]]) -> int:
    from registry.app import BerthApplication

    with storage_settings() as settings:
        async def run() -> int:
            berth = BerthApplication(settings)
            try:
                return await work(await berth.context())
            finally:
                await berth.close()

        return asyncio.run(run())


def purge_uploads(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=ctx.settings.auth_failure_window_seconds)
        uploads, failures = await ctx.store.uploads.purge_expired(), await ctx.access.purge_failures(cutoff)
        print(f"berth: purged {uploads} expired upload sessions and {failures} failed-login records")
        return 0

    return with_store(work)


def tokens_command(args: argparse.Namespace) -> int:
    from registry.auth.passwords import generate_password, hash_password
    from registry.auth.roles import parse_scope_map
    from registry.auth.service import TOKEN_NAME

    async def work(ctx: Context) -> int:
        access = ctx.access
        if args.action == "create":
            if not TOKEN_NAME.fullmatch(args.name):
                print("berth: a token name is 1-63 letters, digits, '.', '_' or '-', starting with a letter "
                      "or digit", file=sys.stderr)
                return 2
            try:
                scope_map = parse_scope_map(args.scope or [])
            except ValueError as error:
                print(f"berth: {error}", file=sys.stderr)
                return 2
            password = generate_password()
            expires = datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None
            try:
                await access.create_token(args.name, hash_password(password), scope_map, expires)
            except ResourceExistsError:
                print(f"berth: a token named {args.name!r} exists; revoke it first", file=sys.stderr)
                return 1
            print(f"token {args.name} created; its password (shown once):\n{password}")
        elif args.action == "rotate":
            token = await access.get_token(args.name)
            password = generate_password()
            if token is None or not await access.set_password(token, hash_password(password)):
                print(f"berth: no token named {args.name!r} (or it changed meanwhile: try again)", file=sys.stderr)
                return 1
            print(f"token {args.name} has a new password (its refresh tokens no longer work); shown once:\n"
                  f"{password}")
        elif args.action == "list":
            for token in await access.list_tokens():
                state = "enabled" if token.usable() else "disabled/expired"
                print(f"{token.name}\t{state}\texpires={token.expires or 'never'}\t{json.dumps(token.scope_map)}")
        elif not await access.delete_token(args.name):
            print(f"berth: no token named {args.name!r}", file=sys.stderr)
            return 1
        else:
            print(f"token {args.name} revoked")
        return 0

    return with_store(work)


def roles_command(args: argparse.Namespace) -> int:
    from registry.auth.roles import parse_role_assignment

    async def work(ctx: Context) -> int:
        access = ctx.access
        if args.action == "assign":
            try:
                names = parse_role_assignment(args.repository, args.role.split(","))
            except ValueError as error:
                print(f"berth: {error}", file=sys.stderr)
                return 2
            await access.assign_role(args.object_id, args.repository, names)
            print(f"{args.object_id}: {','.join(names)} on {args.repository}")
        elif args.action == "list":
            for pattern, names in await access.role_assignments(args.object_id):
                print(f"{pattern}\t{','.join(names)}")
        elif not await access.remove_assignment(args.object_id, args.repository):
            print("berth: no such assignment", file=sys.stderr)
            return 1
        return 0

    return with_store(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry", description="Berth, a private OCI registry")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the registry locally (starts Azurite if needed)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=5000)
    serve_parser.add_argument("--log-level", default="info")
    serve_parser.add_argument("--access-log", action="store_true", help="log every request")
    commands.add_parser("purge-uploads", help="delete expired, unfinished uploads and their bytes (and old "
                                          "failed-login records)")
    tokens = commands.add_parser("tokens", help="repository-scoped tokens (ACR tokens + scope maps)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="create a token and print its password once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", metavar="REPO=ACTIONS",
                        help="e.g. 'team/app=content/read,content/write' (REPO may be prefix/* or *); repeatable")
    create.add_argument("--expires-days", type=int, default=None)
    rotate = token_actions.add_parser("rotate", help="give a token a new password; its refresh tokens stop working")
    rotate.add_argument("name")
    token_actions.add_parser("list", help="list tokens")
    revoke = token_actions.add_parser("revoke", help="delete a token; its refresh tokens stop working")
    revoke.add_argument("name")
    role_parser = commands.add_parser("roles", help="per-repository role assignments for Entra principals")
    role_actions = role_parser.add_subparsers(dest="action", required=True)
    assign = role_actions.add_parser("assign", help="grant roles on a repository (narrows the principal)")
    assign.add_argument("object_id")
    assign.add_argument("--role", required=True, help="AcrPull, AcrPush, AcrDelete or Owner; comma-separated")
    assign.add_argument("--repository", required=True, help="a name, prefix/* or *")
    listing = role_actions.add_parser("list", help="a principal's assignments")
    listing.add_argument("object_id")
    remove = role_actions.add_parser("remove", help="remove an assignment")
    remove.add_argument("object_id")
    remove.add_argument("--repository", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every storage call at INFO
    handlers = {"serve": serve, "purge-uploads": purge_uploads, "tokens": tokens_command, "roles": roles_command}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
