#!/usr/bin/env bash
# Runs the side-by-side benchmark (Berth redirect + proxy, the CNCF registry, the storage floor)
# and writes bench/results/<date>.md and .json; then blob HEAD beside the CNCF registry and
# manifest GET on one instance and on three behind nginx (bench/read_scaling.py, its own
# results file). Usage: bench/run.sh [--repetitions 3] [--big-mib 256] [--small 50] [--seconds 30]
# The cross-instance push (1 GiB layer, POST/PATCH/PUT on three instances) is separate:
#   .venv/bin/python -m bench.cross_instance [--size-mib 1024] [--repetitions 3] [--before REF]
set -euo pipefail
cd "$(dirname "$0")/.."
tools=(skopeo wrk docker-registry curl)
missing=()
for tool in "${tools[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "bench: install ${missing[*]} first (sudo apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi
scripts/setup.sh requirements-dev.txt
.venv/bin/python -m bench.run "$@"
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then  # the three instances' front
  exec .venv/bin/python -m bench.read_scaling
fi
echo "bench: nginx is not installed (scripts/test.sh installs it as root): read scaling skipped" >&2
