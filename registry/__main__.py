"""Berth's command line: `python -m registry serve [--host 127.0.0.1] [--port 5000]`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import logging
import re
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError

from registry.api.http import Context
from registry.azurite import PROJECT_ROOT, Azurite, DataFolderBusy, DataFolderLock
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
    if args.access_log:
        settings = replace(settings, request_log="all")
    azurite = None
    if not settings.storage_configured:
        data = local_data(settings) / "azurite"
        try:
            azurite = Azurite(location=data, holder=f"berth serve at http://{args.host}:{args.port} "
                                                              f"(BERTH_AUTH={settings.auth})").start()
        except DataFolderBusy as error:
            print(f"berth: the local data in {error.location} is in use by {error.holder or 'another process'}. "
                  "Use that registry, stop it first, or give this one its own data with "
                  "BERTH_LOCAL_DATA_DIR=<folder>.", file=sys.stderr)
            return 1
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
            access_log=False,  # Berth's own request log (BERTH_REQUEST_LOG; --access-log: all)
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


def _running_serve(settings: Settings) -> str | None:
    """The storage of the `serve` that holds the local data, if one does. The lock decides, not
    the file alone: a `serve` killed with -9 leaves its connection file behind, and another
    Azurite may answer on those ports by now."""
    local = local_data(settings) / "storage-connection"
    holder = DataFolderLock.holder(local_data(settings) / "azurite")
    if holder is None or "berth serve" not in holder:
        local.unlink(missing_ok=True)  # nobody serves this data: the file is stale
        return None
    if local.exists() and _answers(local.read_text()):
        return local.read_text()
    return None


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
    elif (serving := _running_serve(settings)) is not None:
        yield settings.with_storage(serving)  # the running `serve`'s Azurite
    else:
        # No registry serving: run Azurite on the data for this command, holding the folder's lock
        # (a `serve` started meanwhile waits for none: it refuses, naming this command).
        try:
            azurite = Azurite(location=local_data(settings) / "azurite",
                              holder=f"the command `python -m registry {' '.join(sys.argv[1:3])}`").start()
        except DataFolderBusy as error:
            raise SystemExit(f"berth: the local data in {error.location} is in use by "
                             f"{error.holder or 'another process'}, whose storage does not answer yet; "
                             "try again in a moment, or stop it.") from None
        try:
            yield settings.with_storage(azurite.connection_string)
        finally:
            azurite.stop()


def _auth_in_force() -> str:
    """BERTH_AUTH of the registry this command works on: the local `serve`'s if one holds the
    local data (it says so in the folder's lock), else this environment's."""
    settings = load_settings()
    if not settings.storage_configured:
        lock = local_data(settings) / "azurite" / ".berth-lock"
        held = lock.read_text() if lock.exists() else ""
        if match := re.search(r"BERTH_AUTH=(\w+)", held):
            return match.group(1)
    return settings.auth


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


def with_reported_store(work: Callable[[Context], Awaitable[int]]) -> int:
    """`with_store`, saying a command's refusal on stderr: 2 for a bad argument (ValueError), 1 for
    what the registry refused (RegistryError)."""
    from registry.oci.errors import RegistryError

    async def reported(ctx: Context) -> int:
        try:
            return await work(ctx)
        except ValueError as error:
            print(f"berth: {error}", file=sys.stderr)
            return 2
        except RegistryError as error:
            print(f"berth: {error.message}", file=sys.stderr)
            return 1

    return with_store(reported)


def purge_uploads(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=ctx.settings.auth_failure_window_seconds)
        uploads, failures = await ctx.store.uploads.purge_expired(), await ctx.access.purge_failures(cutoff)
        print(f"berth: purged {uploads} expired upload sessions and {failures} failed-login records")
        return 0

    return with_store(work)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number from 1 to 65535, not {text!r}")
    return int(text)


def _days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError(f"a whole number of days from 1, not {text!r}")
    return int(text)


def _object_id(text: str) -> str:
    """An Entra object id: a GUID, as tokens carry it in `oid` (lower case)."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an Entra object id is a GUID (az ad sp show --id <app id> --query id), not {text!r}") from None
    if str(parsed) != text.lower():
        raise argparse.ArgumentTypeError(f"write the object id as 8-4-4-4-12 hex digits, not {text!r}")
    return str(parsed)


def _seconds(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"a whole number of seconds, not {text!r}")
    return int(text)


def collect_garbage(args: argparse.Namespace) -> int:
    from registry.storage.gc import CollectionReport

    def progress(step: str, count: int) -> None:
        if sys.stderr.isatty():
            print(f"\rberth gc: {step} {count:>8}", end="", file=sys.stderr, flush=True)

    async def work(ctx: Context) -> int:
        grace = ctx.settings.gc_grace_seconds if args.grace_period is None else args.grace_period
        settle = ctx.settings.gc_settle_seconds if args.settle is None else args.settle
        report: CollectionReport = await ctx.store.collector.collect(timedelta(seconds=grace), settle,
                                                                     args.dry_run, progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        for name in report.would_delete:
            print(f"would delete {name}")
        print(f"berth gc: {report.summary()}")
        return 0

    return with_store(work)


def retention_command(args: argparse.Namespace) -> int:
    """`retention show|set|run`: ACR's retention policy for untagged manifests (az acr config
    retention show|update), per registry or per repository, and a run of it on demand."""
    from registry.oci.errors import RegistryError
    from registry.oci.names import validate_name

    try:
        for name in ([args.repository] if getattr(args, "repository", None) else []) + (getattr(args, "names", None)
                                                                                          or []):
            validate_name(name)
    except RegistryError as error:
        print(f"berth: {error.message}", file=sys.stderr)
        return 2
    if args.action == "set" and args.status == "inherit" and args.days is not None:
        print("berth: --days goes with --status enabled or disabled", file=sys.stderr)
        return 2

    def progress(step: str, count: int) -> None:
        if sys.stderr.isatty():
            print(f"\rberth retention: {step} {count:>8}", end="", file=sys.stderr, flush=True)

    async def work(ctx: Context) -> int:
        retention = ctx.store.retention
        try:
            if args.action == "show":
                policy = await (retention.policies.repository(args.repository) if args.repository
                                else retention.policies.registry())
            elif args.action == "set" and args.repository:
                policy = await ctx.store.set_repository_retention(args.repository, args.status, args.days)
            elif args.action == "set":
                policy = await retention.policies.set_registry(args.status, args.days)
            else:
                report = await retention.run(args.names or None, args.dry_run, progress=progress)
                if sys.stderr.isatty():
                    print(file=sys.stderr)
                for deleted in report.deleted:
                    print(f"{'would delete' if args.dry_run else 'deleted'} {deleted}")
                print(f"berth retention: {report.summary()}")
                return 1 if report.failed else 0
        except RegistryError as error:
            print(f"berth: {error.message}", file=sys.stderr)
            return 1
        print(json.dumps(policy.document(), indent=2))
        return 0

    return with_store(work)


def _days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 365:
        raise argparse.ArgumentTypeError(f"a whole number of days from 0 to 365, not {text!r}")
    return int(text)


def _retention_parsers(commands: Any) -> None:
    retention = commands.add_parser("retention", help="delete untagged manifests after N days (az acr config "
                                                      "retention show|update)")
    actions = retention.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the policy in force, and where it comes from")
    show.add_argument("--repository", help="the policy of this repository (its own, or the registry's)")
    update = actions.add_parser("set", help="enable or disable the policy of the registry or of one repository")
    update.add_argument("--repository", help="override the registry's policy for this repository")
    update.add_argument("--status", required=True, choices=("enabled", "disabled", "inherit"),
                        help="inherit: drop the repository's override (or the registry's stored policy, so "
                             "BERTH_RETENTION_DAYS rules)")
    update.add_argument("--days", type=_days, default=None,
                        help="days an untagged manifest is kept, 0-365 (default: as before, else 7)")
    run = actions.add_parser("run", help="apply the policy now (the daily timer does it at 03:05 UTC)")
    run.add_argument("names", nargs="*", metavar="REPOSITORY", help="only these repositories (default: all)")
    run.add_argument("--dry-run", action="store_true", help="report what would be deleted, change nothing")


def import_command(args: argparse.Namespace) -> int:
    """`import`: copy an image from another registry, server-side (az acr import)."""
    import aiohttp

    from registry.oci.errors import RegistryError
    from registry.oci.names import validate_name, validate_tag
    from registry.ops.importer import Importer, ImportReport, parse_platform
    from registry.ops.secrets import SecretReader, SecretUnavailable, key_vault_credential, login_with_set
    from registry.ops.upstream import UpstreamClient, UpstreamError, parse_source

    try:
        source = parse_source(args.source, args.registry)
        platform = parse_platform(args.platform) if args.platform else None
        targets: dict[str, list[str]] = {}
        for image in args.image or [f"{source.repository}:{source.reference}" if ":" not in source.reference
                                    else source.repository]:
            repository, _, tag = image.partition(":")
            targets.setdefault(validate_name(repository), []).extend([validate_tag(tag)] if tag else [])
    except (ValueError, RegistryError) as error:
        print(f"berth: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    if bool(args.username) != bool(args.password or args.password_stdin):
        print("berth: give --username with --password or --password-stdin, or neither", file=sys.stderr)
        return 2
    if args.credential_set and args.username:
        print("berth: give --credential-set or --username, not both", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else args.password
    credentials = (args.username, password) if args.username else None
    tty = sys.stderr.isatty()

    def progress(event: str, digest: str, done: int, total: int) -> None:
        if tty and event == "blob":
            percent = 100 * done // total if total else 100
            print(f"\r  {digest[:23]}  {done:>12} / {total} bytes  {percent:>3}%", end="", file=sys.stderr,
                  flush=True)
            if done >= total:
                print(file=sys.stderr)
        elif tty and event in ("present", "mounted"):
            print(f"  {digest[:23]}  {'already there' if event == 'present' else 'linked from another repository'}",
                  file=sys.stderr)

    async def work(ctx: Context) -> int:
        timeout = aiohttp.ClientTimeout(sock_connect=30, sock_read=300)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
            login = credentials
            sets = ctx.store.credential_sets
            identity = key_vault_credential(ctx.settings.managed_identity_client_id)
            try:
                if args.credential_set:
                    login = await login_with_set(sets, SecretReader(session, identity), args.credential_set, source)
            except (SecretUnavailable, RegistryError) as error:
                print(f"berth: {getattr(error, 'message', error)}", file=sys.stderr)
                return 1
            finally:
                await identity.close()
            client = UpstreamClient(session, login, max_manifest_bytes=ctx.settings.max_manifest_bytes)
            importer = Importer(ctx.store, client, progress)
            for repository, tags in targets.items():
                try:
                    report: ImportReport = await importer.run(source, repository, tags, args.force, platform,
                                                              args.include_referrers)
                except (UpstreamError, RegistryError) as error:
                    if args.credential_set and isinstance(error, UpstreamError) and error.status in (401, 403):
                        await sets.record(args.credential_set, error.message)
                    print(f"berth: import failed: {error.message}", file=sys.stderr)
                    return 1
                print(f"berth: {report.summary()}")
            if args.credential_set:
                await sets.record(args.credential_set, None)
        return 0

    return with_store(work)


def credential_set_command(args: argparse.Namespace) -> int:
    """`credential-set create|list|show|delete`: logins of upstream registries, as references."""
    from registry.ops.upstream import registry_host
    from registry.storage.credential_sets import IDENTITY, TOKEN_USER

    async def work(ctx: Context) -> int:
        sets = ctx.store.credential_sets
        if args.action == "create":
            if args.managed_identity:
                if args.username or args.password:
                    raise ValueError("give --managed-identity, or --username and --password")
                audience = args.audience or ("https://containerregistry.azure.net"
                                             if args.login_server.endswith(".azurecr.io") else None)
                if not audience:
                    raise ValueError("--managed-identity needs --audience (the upstream registry's app ID URI)")
                username, password = TOKEN_USER, IDENTITY + audience
            elif not (args.username and args.password):
                raise ValueError("give --username and --password (a reference), or --managed-identity")
            else:
                username, password = args.username, args.password
            created = await sets.create(args.name, registry_host(args.login_server), username, password)
            print(json.dumps(created.document(), indent=2))
        elif args.action == "list":
            print(json.dumps([item.document() for item in await sets.list()], indent=2))
        elif args.action == "show":
            print(json.dumps((await sets.get(args.name)).document(), indent=2))
        else:
            await sets.delete(args.name)
            print(f"berth: credential set {args.name} deleted")
        return 0

    return with_reported_store(work)


def cache_command(args: argparse.Namespace) -> int:
    """`cache create|list|show|delete`: cache rules of the pull-through cache (az acr cache)."""
    from registry.oci.errors import RegistryError
    from registry.ops.upstream import UpstreamForbidden, refuse_private_registry

    async def work(ctx: Context) -> int:
        rules = ctx.store.cache_rules
        try:
            if args.action == "create":
                if args.credential_set:
                    await ctx.store.credential_sets.get(args.credential_set)
                refuse_private_registry(args.source_repo, ctx.settings.upstream_private_hosts)
                made = await rules.create(args.name, args.source_repo, args.target_repo, args.credential_set)
                print(json.dumps(made.document(), indent=2))
            elif args.action == "list":
                print(json.dumps([rule.document() for rule in await rules.list()], indent=2))
            elif args.action == "show":
                print(json.dumps((await rules.get(args.name)).document(), indent=2))
            else:
                await rules.delete(args.name)
                print(f"berth: cache rule {args.name} deleted (what it cached stays, as pushed images do)")
        except ValueError as error:
            print(f"berth: {error}", file=sys.stderr)
            return 2
        except (RegistryError, UpstreamForbidden) as error:
            print(f"berth: {error.message}", file=sys.stderr)
            return 1
        return 0

    return with_store(work)


def webhook_command(args: argparse.Namespace) -> int:
    """`webhook create|update|list|show|delete|ping|events`: ACR's webhooks (az acr webhook)."""
    from registry.ops.events import EventDispatcher
    from registry.storage.events import Webhook

    async def work(ctx: Context) -> int:
        hooks = ctx.store.webhooks
        allowed = ctx.settings.webhook_allowed_hosts
        if args.action == "create":
            made = await hooks.create(Webhook(args.name, args.uri, tuple(args.actions), args.scope or "",
                                              _headers(args.header), args.status == "enabled", args.schema,
                                              args.secret), allowed)
            print(json.dumps(made.document(), indent=2))
        elif args.action == "update":
            changes = {key: value for key, value in (
                ("uri", args.uri), ("actions", tuple(args.actions) if args.actions else None),
                ("scope", args.scope), ("headers", _headers(args.header) if args.header else None),
                ("enabled", None if args.status is None else args.status == "enabled"),
                ("schema", args.schema), ("secret", args.secret)) if value is not None}
            print(json.dumps((await hooks.update(args.name, allowed, **changes)).document(), indent=2))
        elif args.action == "list":
            print(json.dumps([hook.document() for hook in await hooks.list()], indent=2))
        elif args.action == "show":
            print(json.dumps((await hooks.get(args.name)).document(), indent=2))
        elif args.action == "delete":
            await hooks.delete(args.name)
            await ctx.store.deliveries.prune(args.name, timedelta(0))
            print(f"berth: webhook {args.name} deleted")
        elif args.action == "ping":
            dispatcher = EventDispatcher(ctx.store, ctx.settings)
            try:
                delivery = await dispatcher.ping(await hooks.get(args.name))
            finally:
                await dispatcher.close()
            print(json.dumps({"eventId": delivery.event_id, "outcome": delivery.outcome,
                              "statusCode": delivery.status, "milliseconds": delivery.milliseconds,
                              "error": delivery.error or None}, indent=2))
            return 0 if delivery.outcome == "delivered" else 1
        else:
            deliveries = await ctx.store.deliveries.recent(args.name, args.top)
            rows = [{"time": d.at.isoformat(timespec="seconds") if d.at else "", "event": d.event_id,
                     "action": d.action, "target": d.repository + (f":{d.tag}" if d.tag else ""),
                     "attempt": d.attempt, "outcome": d.outcome, "status": d.status, "ms": d.milliseconds,
                     "error": d.error} for d in deliveries]
            if args.output == "json":
                print(json.dumps(rows, indent=2))
            else:
                print(_table(rows, {key.capitalize(): functools.partial(_cell, key) for key in rows[0]})
                      if rows else "no deliveries recorded")
        return 0

    return with_reported_store(work)


def _cell(key: str, row: dict[str, Any]) -> Any:
    return "-" if row[key] is None else row[key]


def _headers(pairs: list[str] | None) -> dict[str, str]:
    headers = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals:
            raise SystemExit(f"berth: --header takes NAME=VALUE, got {pair!r}")
        headers[name.strip()] = value
    return headers


def _webhook_parser(commands: Any) -> None:
    parser = commands.add_parser("webhook", help="webhooks: POST an event on every push and delete (az acr webhook)")
    actions = parser.add_subparsers(dest="action", required=True)
    for action in ("create", "update"):
        command = actions.add_parser(action, help="define a webhook" if action == "create" else "change a webhook")
        command.add_argument("name", help="5-50 letters and digits")
        command.add_argument("--uri", required=action == "create", help="where events are POSTed (http or https)")
        command.add_argument("--actions", nargs="+", choices=["push", "delete", "untag"],
                             default=["push", "delete"] if action == "create" else None,
                             help="push, delete (a manifest; ACR's two, the default) and untag (a tag deleted, "
                                  "its manifest kept; Berth's own)")
        command.add_argument("--scope", help="repository[:tag] with * wildcards, e.g. 'team/*:*'; empty: everything")
        command.add_argument("--header", action="append", metavar="NAME=VALUE",
                             help="a header sent with every event; a value env:NAME, file:/path or keyvault:https://"
                                  "... is read at delivery (use that for secrets); repeatable (update: replaces all)")
        command.add_argument("--status", choices=["enabled", "disabled"],
                             default="enabled" if action == "create" else None)
        command.add_argument("--schema", choices=["acr", "cloudevents", "eventgrid"],
                             default="acr" if action == "create" else None,
                             help="the body: ACR's webhook payload (default), CloudEvents 1.0, or Event Grid's schema")
        command.add_argument("--secret", help="a reference (env:, file:, keyvault:) to a secret that signs every body: "
                                              "X-Berth-Signature-256 = sha256=HMAC(secret, timestamp + '.' + body)")
    actions.add_parser("list", help="every webhook")
    for action, text in (("show", "one webhook"), ("delete", "remove a webhook (its delivery log is pruned later)"),
                         ("ping", "send a ping event now and print the answer")):
        actions.add_parser(action, help=text).add_argument("name")
    events = actions.add_parser("events", help="recent deliveries, newest first (az acr webhook list-events)")
    events.add_argument("name")
    events.add_argument("--top", type=int, default=20)
    events.add_argument("--output", "-o", choices=["table", "json"], default="table")


def _cache_parser(commands: Any) -> None:
    parser = commands.add_parser("cache", help="pull-through cache rules (az acr cache)")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="mirror an upstream repository (or all under a prefix)")
    create.add_argument("name")
    create.add_argument("--source-repo", "-s", required=True,
                        help="upstream registry/repository, or registry/prefix/* (http://host:port/... for a "
                             "registry without TLS), e.g. docker.io/library/*")
    create.add_argument("--target-repo", "-t", required=True,
                        help="repository here, or prefix/* (the * stands for the same path), e.g. library/*")
    create.add_argument("--credential-set", "-c", help="log in upstream with this credential set")
    actions.add_parser("list", help="every rule")
    show = actions.add_parser("show", help="one rule")
    show.add_argument("name")
    delete = actions.add_parser("delete", help="remove a rule")
    delete.add_argument("name")


def _credential_set_parser(commands: Any) -> None:
    parser = commands.add_parser("credential-set", help="logins of upstream registries, kept as references "
                                                        "(az acr credential-set)")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a login for one upstream registry")
    create.add_argument("name")
    create.add_argument("--login-server", "-l", required=True, help="the registry it is for, e.g. docker.io")
    create.add_argument("--username", "-u",
                        help="the user name, or a reference to it (env:NAME, file:/path, keyvault:https://...)")
    create.add_argument("--managed-identity", action="store_true",
                        help="no secret: log in with the app's managed identity (ACR, or a Berth with Entra ID)")
    create.add_argument("--audience", help="with --managed-identity: the upstream's Entra audience (default for "
                                           "*.azurecr.io: https://containerregistry.azure.net)")
    create.add_argument("--password", "-p",
                        help="a reference to the password or token: env:NAME, file:/path or "
                             "keyvault:https://<vault>.vault.azure.net/secrets/<name> (never the secret itself)")
    actions.add_parser("list", help="every set, with its health (last success and failure)")
    show = actions.add_parser("show", help="one set")
    show.add_argument("name")
    delete = actions.add_parser("delete", help="forget a set")
    delete.add_argument("name")


def _import_parser(commands: Any) -> None:
    parser = commands.add_parser("import", help="copy an image from another registry, server-side (az acr import)",
                                 description="Copy an image (every platform of an index; with --include-referrers "
                                             "its signatures and SBOMs too) from another registry into this one. "
                                             "Repeating an import that was cut short fetches only what is missing.")
    parser.add_argument("--source", required=True,
                        help="[registry/]repository(:tag|@digest), e.g. docker.io/library/nginx:1.27, "
                             "mcr.microsoft.com/dotnet/runtime:8.0; http://host:port/... for a registry without TLS")
    parser.add_argument("--registry", help="the source registry, when --source names only repository and tag")
    parser.add_argument("--image", "-t", action="append",
                        help="target repository:tag (repeatable; default: the source's repository and tag)")
    parser.add_argument("--credential-set", help="log in with this credential set (see credential-set)")
    parser.add_argument("--username", "-u", help="for the source registry")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password", "-p", help="for the source registry (prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    parser.add_argument("--platform", help="import only this image of an index, os/architecture[/variant] "
                                           "(default: every platform)")
    parser.add_argument("--include-referrers", action="store_true",
                        help="also copy the referrers (signatures, SBOMs, attestations) the source lists")
    parser.add_argument("--force", action="store_true", help="move a target tag that names other content")


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
            if _auth_in_force() != "token":
                print("berth: note: the registry runs with BERTH_AUTH=none: tokens have no effect until it "
                      "runs with BERTH_AUTH=token", file=sys.stderr)
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
            print(f"berth: {args.object_id} has no assignment on {args.repository}", file=sys.stderr)
            return 1
        else:
            print(f"{args.object_id}: assignment on {args.repository} removed")
        return 0

    return with_store(work)


def _table(rows: list[dict[str, Any]], columns: dict[str, Callable[[dict[str, Any]], Any]]) -> str:
    """Rows as aligned columns, as `az ... --output table` prints them."""
    cells = [list(columns)] + [[str(value(row)) for value in columns.values()] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [cells[0], ["-" * width for width in widths], *cells[1:]]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


METADATA_TABLES: dict[str, dict[str, Callable[[dict[str, Any]], Any]]] = {
    "repo": {"Name": lambda r: r["imageName"], "Manifests": lambda r: r["manifestCount"],
             "Tags": lambda r: r["tagCount"], "Created": lambda r: r["createdTime"],
             "LastUpdate": lambda r: r["lastUpdateTime"]},
    "deleted": {"ManifestsDeleted": lambda r: len(r["manifestsDeleted"]),
                "TagsDeleted": lambda r: len(r["tagsDeleted"])},
    "tags": {"Name": lambda t: t["name"], "Digest": lambda t: t["digest"], "LastUpdate": lambda t: t["lastUpdateTime"]},
    "manifests": {"Digest": lambda m: m["digest"], "Tags": lambda m: ",".join(m.get("tags", [])),
                  "MediaType": lambda m: m["mediaType"], "ImageSize": lambda m: m["imageSize"],
                  "LastUpdate": lambda m: m["lastUpdateTime"]},
}


def metadata_command(args: argparse.Namespace) -> int:
    """`repo show|delete`, `tags list`, `manifests list`: what `az acr repository show|delete`,
    `show-tags --detail` and `az acr manifest list-metadata` print, read from storage directly."""
    from registry.api import acr
    from registry.oci.errors import RegistryError
    from registry.oci.names import validate_name
    from registry.storage.attributes import Cursor

    try:
        validate_name(args.name)
    except RegistryError as error:
        print(f"berth: {error.message}", file=sys.stderr)
        return 2
    deleting = args.command == "repo" and args.action == "delete"
    if deleting and not args.yes:
        if not sys.stdin.isatty():
            print("berth: repo delete deletes every manifest and tag of the repository; pass --yes to confirm",
                  file=sys.stderr)
            return 2
        answer = input(f"This deletes repository {args.name!r}: every manifest and tag. Continue? (y/n): ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    order = None if getattr(args, "orderby", "none") == "none" else args.orderby

    async def work(ctx: Context) -> int:
        store = ctx.store.attributes
        registry = ctx.settings.service or (ctx.settings.public_url or "").split("://")[-1] or None
        limit = ctx.settings.max_page_size
        try:
            if deleting:
                manifests, tags = await ctx.store.delete_repository(args.name)
                document: Any = {"manifestsDeleted": manifests, "tagsDeleted": tags}
                table = "deleted"
            elif args.command == "repo" and args.action == "update":
                document, table = await _update_locks(ctx, args, registry or "")
            elif args.command == "repo":
                document = acr.repository_document(registry or "", await store.repository(args.name))
                table = "repo"
            elif args.command == "tags":
                cursor, document, more = Cursor(), [], True
                while more:
                    tags_page, more = await store.tags(args.name, limit, cursor, order, None)
                    document += [acr.tag_document(tag) for tag in tags_page]
                    cursor = Cursor(tags_page[-1].name, tags_page[-1].updated) if tags_page else cursor
                table = "tags"
            else:
                cursor, document, more = Cursor(), [], True
                while more:
                    manifest_page, more = await store.manifests(args.name, limit, cursor, order)
                    document += [acr.manifest_document(manifest) for manifest in manifest_page]
                    cursor = Cursor(manifest_page[-1].digest, manifest_page[-1].updated) if manifest_page else cursor
                table = "manifests"
        except RegistryError as error:
            print(f"berth: {error.message}", file=sys.stderr)
            return 1
        if args.output == "table":
            print(_table(document if isinstance(document, list) else [document], METADATA_TABLES[table]))
        else:
            print(json.dumps(document, indent=2))
        return 0

    return with_store(work)


LOCK_OPTIONS = {"write_enabled": "writeEnabled", "delete_enabled": "deleteEnabled", "read_enabled": "readEnabled",
                "list_enabled": "listEnabled"}


async def _update_locks(ctx: Context, args: argparse.Namespace, registry: str) -> tuple[Any, str]:
    """`repo update`: set the changeable attributes (locks) of a repository, a tag or a manifest."""
    from registry.api import acr
    from registry.oci.digest import parse_digest
    from registry.oci.errors import QUERY_UNSUPPORTED, RegistryError
    from registry.oci.names import validate_tag

    changes = {flag: value == "true" for option, flag in LOCK_OPTIONS.items()
               if (value := getattr(args, option)) is not None}
    if not changes:
        raise RegistryError(QUERY_UNSUPPORTED, "nothing to update: give --write-enabled, --delete-enabled, "
                            "--read-enabled or --list-enabled")
    store = ctx.store
    if args.tag:
        await store.manifests.set_tag_locks(args.name, validate_tag(args.tag), changes)
        return acr.tag_document(await store.attributes.tag(args.name, args.tag)), "tags"
    if args.digest:
        digest = parse_digest(args.digest)
        await store.manifests.set_manifest_locks(args.name, digest, changes)
        return acr.manifest_document(await store.attributes.manifest(args.name, digest)), "manifests"
    await store.set_repository_locks(args.name, changes)
    return acr.repository_document(registry, await store.attributes.repository(args.name)), "repo"


def _metadata_parsers(commands: Any) -> None:
    """The `repo`, `tags` and `manifests` commands (the ACR metadata API from the command line)."""
    def command(parent: Any, name: str, help_text: str, orderby: bool = False) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("name", help="the repository, e.g. team/app")
        parser.add_argument("--output", "-o", choices=("json", "table"), default="json", help="default: json")
        if orderby:
            parser.add_argument("--orderby", choices=("none", "timedesc", "timeasc"), default="none",
                                help="by last update, newest (timedesc) or oldest (timeasc) first; "
                                     "default: by name")
        return parser

    repo = commands.add_parser("repo", help="a repository's attributes, or delete it (az acr repository show|delete)")
    repo_actions = repo.add_subparsers(dest="action", required=True)
    command(repo_actions, "show", "counts and times of a repository, as `az acr repository show` prints them")
    delete = command(repo_actions, "delete", "delete every manifest and tag of a repository and its blob links "
                                             "(the bytes are left to `gc`)")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    update = command(repo_actions, "update", "lock or unlock a repository, a tag or a manifest (az acr repository "
                                             "update --write-enabled false ...)")
    target = update.add_mutually_exclusive_group()
    target.add_argument("--tag", help="update this tag's attributes, not the repository's")
    target.add_argument("--digest", help="update this manifest's attributes, not the repository's")
    for option in LOCK_OPTIONS:
        update.add_argument(f"--{option.replace('_', '-')}", dest=option, choices=("true", "false"))
    tags = commands.add_parser("tags", help="tags of a repository (az acr repository show-tags --detail)")
    command(tags.add_subparsers(dest="action", required=True), "list",
            "every tag of a repository with its digest and times", orderby=True)
    manifests = commands.add_parser("manifests", help="manifests of a repository (az acr manifest list-metadata)")
    command(manifests.add_subparsers(dest="action", required=True), "list",
            "every manifest of a repository with its size, media types and tags", orderby=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry", description="Berth, a private OCI registry")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="serve the registry locally (starts Azurite if needed)",
        description="Serve the registry with uvicorn. Without BERTH_STORAGE_CONNECTION_STRING or "
                    "BERTH_STORAGE_ACCOUNT it starts Azurite on free loopback ports, with its data in "
                    "BERTH_LOCAL_DATA_DIR (.berth-data), and stops it on exit; one server per data folder.")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="address to listen on (default 127.0.0.1; beyond loopback, mind "
                                   "BERTH_AUTH and that redirect mode sends clients to Azurite on loopback)")
    serve_parser.add_argument("--port", type=_port, default=5000, help="TCP port, 1-65535 (default 5000)")
    serve_parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                              help="uvicorn's log level (default info)")
    serve_parser.add_argument("--access-log", action="store_true",
                              help="log every request as a JSON line with its X-Request-Id (BERTH_REQUEST_LOG=all; "
                                   "the default logs writes and errors)")
    commands.add_parser("purge-uploads", help="delete expired, unfinished uploads and their bytes (and old "
                                          "failed-login records)")
    tokens = commands.add_parser("tokens", help="repository-scoped tokens (ACR tokens + scope maps)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="create a token and print its password once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", metavar="REPO=ACTIONS",
                        help="e.g. 'team/app=content/read,content/write' (REPO may be prefix/* or *); repeatable")
    create.add_argument("--expires-days", type=_days, default=None, help="the token stops working after this many days")
    rotate = token_actions.add_parser("rotate", help="give a token a new password; its refresh tokens stop working")
    rotate.add_argument("name")
    token_actions.add_parser("list", help="list tokens")
    revoke = token_actions.add_parser("revoke", help="delete a token; its refresh tokens stop working")
    revoke.add_argument("name")
    role_parser = commands.add_parser("roles", help="per-repository role assignments for Entra principals")
    role_actions = role_parser.add_subparsers(dest="action", required=True)
    assign = role_actions.add_parser("assign", help="grant roles on a repository (narrows the principal)")
    assign.add_argument("object_id", type=_object_id, help="the principal's Entra object id (a GUID)")
    assign.add_argument("--role", required=True, help="AcrPull, AcrPush, AcrDelete or Owner; comma-separated")
    assign.add_argument("--repository", required=True, help="a name, prefix/* or *")
    listing = role_actions.add_parser("list", help="a principal's assignments")
    listing.add_argument("object_id", type=_object_id, help="the principal's Entra object id (a GUID)")
    remove = role_actions.add_parser("remove", help="remove an assignment")
    remove.add_argument("object_id", type=_object_id, help="the principal's Entra object id (a GUID)")
    remove.add_argument("--repository", required=True)
    gc_parser = commands.add_parser("gc", help="delete blob bytes no repository links to any more (safe while "
                                               "the registry runs)")
    gc_parser.add_argument("--dry-run", action="store_true", help="report what would be deleted, change nothing")
    gc_parser.add_argument("--grace-period", type=_seconds, default=None, metavar="SECONDS",
                           help="leave bytes that changed more recently than this (default: BERTH_GC_GRACE_SECONDS, "
                                "a day)")
    gc_parser.add_argument("--settle", type=_seconds, default=None, metavar="SECONDS",
                           help="wait between condemning and deleting (default: BERTH_GC_SETTLE_SECONDS, 60)")
    _metadata_parsers(commands)
    _retention_parsers(commands)
    _import_parser(commands)
    _credential_set_parser(commands)
    _cache_parser(commands)
    _webhook_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every storage call at INFO
    handlers = {"serve": serve, "purge-uploads": purge_uploads, "tokens": tokens_command, "roles": roles_command,
                "gc": collect_garbage, "repo": metadata_command, "tags": metadata_command,
                "manifests": metadata_command, "retention": retention_command,
                "import": import_command, "credential-set": credential_set_command,
                "cache": cache_command, "webhook": webhook_command}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
