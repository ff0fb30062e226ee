#!/usr/bin/env bash
# Sets up (first run) and runs the whole test suite: unit, HTTP against Azurite, real clients.
# Extra arguments go to pytest, e.g. scripts/test.sh -k skopeo
set -euo pipefail
cd "$(dirname "$0")/.."

# The real clients the suite drives, the CNCF registry (an upstream to import from), nginx (the
# round-robin front of the multi-instance mode) and chromium (the web page), from Debian. Without
# root they must already be installed. Their services are not started (see policy-rc.d below).
clients=(skopeo podman buildah containerd docker-registry)
missing=()
for tool in "${clients[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
# nginx lives in /usr/sbin, often not on a non-root PATH; Debian 12 ships it as nginx-light.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
# The web page's tests drive a real browser: Debian's chromium and its driver (tests/ui).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Installing nginx must not start a system nginx on port 80: deny service starts while
    # apt runs (policy-rc.d exit 101), then put back whatever policy was there.
    policy=/usr/sbin/policy-rc.d
    restore_policy() { if [ -e "$policy.berth-saved" ]; then mv -f "$policy.berth-saved" "$policy"; else rm -f "$policy"; fi; }
    if [ -e "$policy" ]; then mv "$policy" "$policy.berth-saved"; fi
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    restore_policy
    trap - EXIT
  else
    echo "note: ${missing[*]} not installed; their tests will be skipped (sudo apt-get install ${missing[*]})" >&2
  fi
fi

scripts/setup.sh requirements-dev.txt
# checkov (infra scan) lives in its own venv so its pins stay out of the app's.
if [ ! -x .venv-tools/bin/checkov ] || [ requirements-tools.txt -nt .venv-tools/.installed ]; then
  "${PYTHON:-python3}" -m venv .venv-tools
  .venv-tools/bin/pip install --quiet --disable-pip-version-check -r requirements-tools.txt
  touch .venv-tools/.installed
fi
.venv/bin/ruff check --quiet .
# pytest's own exit status is the result: 1 for failures, 5 when no test ran; both fail the run.
# Two workers (BERTH_TEST_WORKERS; 0 runs in this process), each with its own Azurite and
# servers; a test file stays on one worker, so its module fixtures start once.
exec .venv/bin/python -m pytest -n "${BERTH_TEST_WORKERS:-2}" --dist loadfile "$@"
