"""Berth's command line: `python -m registry serve [--host 127.0.0.1] [--port 5000]`."""

from __future__ import annotations

import argparse
import logging
import sys

from registry.azurite import PROJECT_ROOT, Azurite
from registry.settings import SettingsError, load_settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from registry.app import BerthApplication

    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"berth: {error}", file=sys.stderr)
        return 2
    azurite = None
    if not settings.storage_configured:
        data = PROJECT_ROOT / ".berth-data" / "azurite"
        azurite = Azurite(location=data).start()
        settings = settings.with_storage(azurite.connection_string)
        print(f"berth: started Azurite (blob :{azurite.blob_port}, table :{azurite.table_port}), data in {data}")
    print(f"berth: registry at http://{args.host}:{args.port}/v2/ (blob delivery: {settings.blob_delivery})",
          flush=True)
    try:
        uvicorn.run(
            BerthApplication(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_keep_alive=30,
        )
    finally:
        if azurite is not None:
            azurite.stop()
    return 0


def purge_uploads(args: argparse.Namespace) -> int:
    import asyncio

    from registry.app import BerthApplication

    settings = load_settings()
    if not settings.storage_configured:
        print("berth: set BERTH_STORAGE_CONNECTION_STRING or BERTH_STORAGE_ACCOUNT", file=sys.stderr)
        return 2

    async def run() -> int:
        berth = BerthApplication(settings)
        try:
            return await berth.purge_expired_uploads()
        finally:
            await berth.close()

    print(f"berth: purged {asyncio.run(run())} expired upload sessions")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry", description="Berth, a private OCI registry")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the registry locally (starts Azurite if needed)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=5000)
    serve_parser.add_argument("--log-level", default="info")
    serve_parser.add_argument("--access-log", action="store_true", help="log every request")
    commands.add_parser("purge-uploads", help="delete expired, unfinished uploads and their bytes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every storage call at INFO
    if args.command == "serve":
        return serve(args)
    return purge_uploads(args)


if __name__ == "__main__":
    sys.exit(main())
