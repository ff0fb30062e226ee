#!/usr/bin/env bash
# Sets up (first run) and serves Berth on 127.0.0.1; starts Azurite unless storage is configured.
# Usage: scripts/serve.sh [--host 127.0.0.1] [--port 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
exec .venv/bin/python -m registry serve "$@"
