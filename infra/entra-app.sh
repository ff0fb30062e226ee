#!/usr/bin/env bash
# Creates the registry's Entra ID app registration with ACR-named app roles, and (optionally)
# grants one of them to a managed identity or service principal.
#   infra/entra-app.sh                                  # create the app + its service principal
#   infra/entra-app.sh grant <principal-object-id> AcrPull
# Needs: az (logged in with rights to create app registrations), uuidgen.
set -euo pipefail
uri=${BERTH_APP_ID_URI:-api://berth-registry}

role() {  # value, description
  printf '{"allowedMemberTypes":["User","Application"],"displayName":"%s","value":"%s","description":"%s","isEnabled":true,"id":"%s"}' \
    "$1" "$1" "$2" "$(uuidgen)"
}

if [ "${1:-}" = grant ]; then
  principal=$2; role_name=$3
  sp=$(az ad sp show --id "$uri" --query id -o tsv)
  role_id=$(az ad sp show --id "$uri" --query "appRoles[?value=='$role_name'].id" -o tsv)
  [ -n "$role_id" ] || { echo "no app role $role_name" >&2; exit 2; }
  az rest --method POST --uri "https://graph.microsoft.com/v1.0/servicePrincipals/$sp/appRoleAssignedTo" \
    --body "{\"principalId\":\"$principal\",\"resourceId\":\"$sp\",\"appRoleId\":\"$role_id\"}"
  exit 0
fi

roles="[$(role AcrPull 'Pull images'),$(role AcrPush 'Pull and push images'),$(role AcrDelete 'Delete images'),$(role Owner 'Everything, including the catalog')]"
app_id=$(az ad app create --display-name berth-registry --identifier-uris "$uri" --app-roles "$roles" \
  --query appId -o tsv)
az ad sp create --id "$app_id" >/dev/null
echo "app registration $app_id; deploy with entraAudience=$uri,$app_id"
