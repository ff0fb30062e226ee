#!/usr/bin/env bash
# azd's prepackage hook (azure.yaml): compiles the app's bytecode into __pycache__/ before azd
# zips the folder, as scripts/package.sh does into its zip (the package is mounted read-only on
# Azure, where Python cannot cache what it compiles). Hash-checked pyc files, so the zip's
# timestamps do not matter. PYTHON picks the interpreter (python3 by default); it should be the
# version the function app runs (infra/main.bicep, pythonVersion), or the runtime ignores them.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
runtime=$(sed -n "s/^param pythonVersion string = '\([0-9.]*\)'.*/\1/p" infra/main.bicep)
here=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$here" != "$runtime" ]; then
  echo "note: $python is Python $here; the function app runs $runtime and will compile the modules itself" \
       "on every cold start (PYTHON=python$runtime azd deploy)" >&2
fi
exec "$python" -m compileall -q -f --invalidation-mode checked-hash function_app.py registry
