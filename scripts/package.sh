#!/usr/bin/env bash
# Builds the deployment zip for Azure Functions: the app and its requirements, nothing else
# (no tests, venvs, node_modules or infra). Usage: scripts/package.sh [dist/berth.zip]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/berth.zip}
mkdir -p "$(dirname "$out")"
python3 - "$out" <<'PY'
import sys
import zipfile
from pathlib import Path

# What the Functions host needs; the platform installs requirements.txt (remote build).
INCLUDE = ["function_app.py", "host.json", "requirements.txt", "registry"]
# The command line and its local-development harness (which carries Azurite's well-known key)
# have no business in the deployed app; operators run them from a checkout.
EXCLUDE = {"registry/__main__.py", "registry/azurite.py"}
out = Path(sys.argv[1])
with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    for entry in INCLUDE:
        path = Path(entry)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or file.as_posix() in EXCLUDE:
                continue
            archive.write(file, file.as_posix())
print(f"{out}: {len(zipfile.ZipFile(out).namelist())} files")
PY
