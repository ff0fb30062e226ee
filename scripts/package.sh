#!/usr/bin/env bash
# Builds the deployment zip for Azure Functions: the app, its bytecode and its requirements,
# nothing else (no tests, venvs, node_modules or infra). Usage: scripts/package.sh [dist/berth.zip]
# PYTHON names the interpreter that compiles the bytecode (python3 by default); it should be the
# version the function app runs (infra/main.bicep, pythonVersion), or the runtime ignores it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/berth.zip}
mkdir -p "$(dirname "$out")"
"${PYTHON:-python3}" - "$out" <<'PY'
import importlib.util
import py_compile
import re
import sys
import tempfile
import zipfile
from pathlib import Path

# What the Functions host needs; the platform installs requirements.txt (remote build).
INCLUDE = ["function_app.py", "host.json", "requirements.txt", "registry"]
# The command line and its local-development harness (which carries Azurite's well-known key)
# have no business in the deployed app; operators run them from a checkout.
EXCLUDE = {"registry/__main__.py", "registry/azurite.py"}
out = Path(sys.argv[1])
runtime = re.search(r"param pythonVersion string = '([0-9.]+)'", Path("infra/main.bicep").read_text())[1]
here = f"{sys.version_info[0]}.{sys.version_info[1]}"
if here != runtime:
    print(f"note: bytecode compiled by Python {here}; the function app runs {runtime} and will compile "
          f"the modules itself on every cold start (PYTHON=python{runtime} scripts/package.sh)", file=sys.stderr)
compiled = 0
with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
        tempfile.TemporaryDirectory() as scratch:
    for entry in INCLUDE:
        path = Path(entry)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or file.as_posix() in EXCLUDE:
                continue
            archive.write(file, file.as_posix())
            if file.suffix != ".py":
                continue
            # The package is mounted read-only, so Python cannot cache what it compiles: without
            # this every cold start compiles every module. Hash-checked, so the zip's timestamps
            # do not matter and a source that differs from its bytecode is compiled as usual.
            pyc = Path(scratch) / "module.pyc"
            py_compile.compile(str(file), cfile=str(pyc), dfile=file.as_posix(), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            archive.write(pyc, Path(importlib.util.cache_from_source(file.as_posix())).as_posix())
            compiled += 1
print(f"{out}: {len(zipfile.ZipFile(out).namelist())} files ({compiled} compiled for Python {here})")
PY
