#!/bin/sh
# azd's preprovision hook (azure.yaml): what infra/azd.bicep needs before anything is created.
set -eu
audience=${BERTH_ENTRA_AUDIENCE:-$(azd env get-value BERTH_ENTRA_AUDIENCE 2>/dev/null || true)}
if [ -z "$audience" ]; then
  echo "berth: set the registry's Entra audience first (infra/entra-app.sh prints it):" >&2
  echo "  azd env set BERTH_ENTRA_AUDIENCE 'api://berth-registry,<app client id>'" >&2
  exit 1
fi
key=${BERTH_TOKEN_SIGNING_KEY:-$(azd env get-value BERTH_TOKEN_SIGNING_KEY 2>/dev/null || true)}
if [ -z "$key" ]; then
  # Every instance signs registry tokens with this key; it stays in .azure/<environment>/.env.
  azd env set BERTH_TOKEN_SIGNING_KEY "$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  echo "berth: generated BERTH_TOKEN_SIGNING_KEY into the azd environment"
fi
