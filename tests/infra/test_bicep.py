"""infra/: every template parses, and the security properties we promise are in them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from registry.azurite import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
TEMPLATES = sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    parser = BicepParser()
    return {path.relative_to(INFRA).as_posix(): parser.parse(file_path=path) for path in TEMPLATES}


def resources(parsed: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    """The config of every resource of a type, in every template (loops and conditions unwrapped)."""
    found = []
    for template in parsed.values():
        for resource in template.get("resources", {}).values():
            if resource["type"] == type_ and not resource["existing"]:
                config = resource["config"]
                while "loop_type" in config or "condition" in config:
                    config = config["config"]
                found.append(config)
    return found


def one(parsed: dict[str, Any], type_: str) -> dict[str, Any]:
    found = resources(parsed, type_)
    assert len(found) == 1, type_
    return found[0]


def test_every_template_parses(parsed: dict[str, Any]) -> None:
    assert {"main.bicep", "modules/storage.bicep", "modules/functionapp.bicep"} <= set(parsed)
    assert len(parsed) == len(TEMPLATES)


def test_storage_is_entra_only_and_private(parsed: dict[str, Any]) -> None:
    properties = one(parsed, "Microsoft.Storage/storageAccounts")["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["publicNetworkAccess"] == "Disabled"
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["allowBlobPublicAccess"] is False
    assert properties["networkAcls"]["defaultAction"] == "Deny"
    containers = resources(parsed, "Microsoft.Storage/storageAccounts/blobServices/containers")
    # the registry's, the package's, and (one looped resource) the Functions host's two
    assert all(c["properties"]["publicAccess"] == "None" for c in containers) and len(containers) == 3
    main = parsed["main.bicep"]
    assert main["parameters"]["storageSku"]["default"] == "Standard_ZRS"
    assert main["variables"]["tablePrefix"]["value"] == "berth"


def test_no_keys_or_connection_strings_anywhere() -> None:
    for path in TEMPLATES:
        text = path.read_text()
        for forbidden in ("listKeys", "AccountKey", "connectionString(", "AzureWebJobsStorage'"):
            assert forbidden not in text, f"{forbidden} in {path.name}"


def test_function_app_settings_and_hardening(parsed: dict[str, Any]) -> None:
    app = one(parsed, "Microsoft.Web/sites")
    assert app["kind"] == "functionapp,linux"
    assert app["identity"]["type"] == "UserAssigned"
    properties = app["properties"]
    assert properties["httpsOnly"] is True
    site = properties["siteConfig"]
    assert site["minTlsVersion"] == "1.2" and site["scmMinTlsVersion"] == "1.2"
    assert site["ftpsState"] == "Disabled"
    assert properties["functionAppConfig"]["runtime"]["name"] == "python"
    assert properties["functionAppConfig"]["deployment"]["storage"]["authentication"]["type"] == (
        "UserAssignedIdentity"
    )
    plan = one(parsed, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    settings = parsed["modules/functionapp.bicep"]["variables"]["platformSettings"]["value"]
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "AzureWebJobsStorage__accountName" in settings and "AzureWebJobsStorage" not in settings
    assert settings["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT" in settings
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].endswith("Authorization=AAD")
    policies = resources(parsed, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert len(policies) == 2 and all(p["properties"]["allow"] is False for p in policies)
    main = parsed["main.bicep"]
    assert main["parameters"]["publicNetworkAccess"]["default"] == "Disabled"
    assert main["parameters"]["pythonVersion"]["default"] >= "3.11"
    registry = main["modules"]["functionApp"]["config"]["params"]["registrySettings"]
    assert registry["BERTH_AUTH"] == "token"
    assert {"BERTH_STORAGE_ACCOUNT", "BERTH_MANAGED_IDENTITY_CLIENT_ID", "BERTH_TOKEN_SIGNING_KEY",
            "BERTH_ENTRA_TENANT_ID", "BERTH_ENTRA_AUDIENCE", "BERTH_BLOB_DELIVERY"} <= set(registry)


def test_private_endpoints_and_dns_for_every_service(parsed: dict[str, Any]) -> None:
    main = parsed["main.bicep"]["modules"]
    storage_loop = main["storageEndpoints"]["config"]["loop_type"]["detail"]["array_name"]
    assert storage_loop == ["blob", "table", "queue"]
    zone_loop = main["storageZones"]["config"]
    assert zone_loop["loop_type"]["detail"]["array_name"] == storage_loop
    assert zone_loop["config"]["params"]["zoneName"] == "privatelink.${service}.${storageSuffix}"
    assert main["appEndpoint"]["config"]["params"]["groupId"] == "sites"
    assert main["appZone"]["config"]["params"]["zoneName"] == "privatelink.azurewebsites.net"
    endpoint = one(parsed, "Microsoft.Network/privateEndpoints")
    assert endpoint["properties"]["privateLinkServiceConnections"][0]["properties"]["groupIds"] == ["groupId"]
    assert one(parsed, "Microsoft.Network/privateEndpoints/privateDnsZoneGroups")
    links = resources(parsed, "Microsoft.Network/privateDnsZones/virtualNetworkLinks")
    assert len(links) == 2 and all(link["properties"]["registrationEnabled"] is False for link in links)


def test_integration_subnet_is_delegated(parsed: dict[str, Any]) -> None:
    vnet = one(parsed, "Microsoft.Network/virtualNetworks")
    subnets = {s["name"]: s["properties"] for s in vnet["properties"]["subnets"]}
    assert subnets["integration"]["delegations"][0]["properties"]["serviceName"] == "Microsoft.App/environments"
    assert "private-endpoints" in subnets


def test_egress_goes_through_a_nat_gateway_by_default(parsed: dict[str, Any]) -> None:
    """The subnets have no default outbound access; the app's egress (Entra keys, upstreams,
    webhooks) leaves through a NAT gateway with a static IP, on unless the parameter says not."""
    main = parsed["main.bicep"]
    assert main["parameters"]["natGateway"]["default"] is True
    network = main["modules"]["network"]["config"]
    assert network["condition"] == "ownNetwork"  # a template's own VNet only (hub-spoke: the hub's egress)
    assert network["config"]["params"]["natGateway"] == "natGateway"
    nat = one(parsed, "Microsoft.Network/natGateways")
    assert nat["sku"]["name"] == "Standard" and len(nat["properties"]["publicIpAddresses"]) == 1
    address = one(parsed, "Microsoft.Network/publicIPAddresses")
    assert address["sku"]["name"] == "Standard" and address["properties"]["publicIPAllocationMethod"] == "Static"
    vnet = one(parsed, "Microsoft.Network/virtualNetworks")
    subnets = {s["name"]: s["properties"] for s in vnet["properties"]["subnets"]}
    assert all(subnet["defaultOutboundAccess"] is False for subnet in subnets.values())
    chosen = subnets["integration"]["natGateway"]["operator"]["operands"]
    assert chosen["condition"] == "natGateway"
    assert chosen["true_value"]["id"]["operator"]["operands"] == {"operand_1": "nat", "operand_2": "id"}
    assert "egressAddress" in main["outputs"]


def _names(expression: Any) -> str:
    return json.dumps(expression)


def test_identities_hold_only_the_data_roles_they_need_where_they_need_them(parsed: dict[str, Any]) -> None:
    """No data role on the whole storage account (the Delegator role, which only issues SAS keys,
    is the one account-scoped role); the registry's identity cannot write the app's package."""
    storage = parsed["modules/storage.bicep"]
    assert storage["variables"]["roles"]["value"] == {
        "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "storageBlobDelegator": "db58b8e5-c6ad-4a2a-8342-4190687cbf4a",
        "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    }
    assignments = {name: resource["config"] for name, resource in storage["resources"].items()
                   if resource["type"] == "Microsoft.Authorization/roleAssignments"}
    scopes = {}
    for name, config in assignments.items():
        body = config["config"] if "loop_type" in config else config
        scopes[name] = (_names(body["scope"]), _names(body["properties"]["roleDefinitionId"]),
                        body["properties"]["principalId"])
    assert scopes["registryBlobs"][0] == '"registry"' and "storageBlobDataContributor" in scopes["registryBlobs"][1]
    assert scopes["delegator"][0] == '"account"' and "storageBlobDelegator" in scopes["delegator"][1]
    assert [name for name, (scope, _, _) in scopes.items() if scope == '"account"'] == ["delegator"]
    assert "hostContainers" in scopes["hostBlobs"][0]
    assert "tables" in scopes["tableRoles"][0] and "storageTableDataContributor" in scopes["tableRoles"][1]
    assert "eventsQueues" in scopes["queueRoles"][0] and "storageQueueDataContributor" in scopes["queueRoles"][1]
    assert assignments["tableRoles"]["loop_type"]["detail"]["array_name"] == "tableNames"
    assert storage["variables"]["tableNames"]["value"] == [
        f"${{tablePrefix}}{table}" for table in ("repos", "digests", "catalog", "auth", "events")]
    # The package: the deployment identity alone, and the runtime identity nowhere near it.
    assert scopes["packageBlobs"] == ('"deployment"', scopes["registryBlobs"][1], "deploymentPrincipalId")
    assert {principal for name, (_, _, principal) in scopes.items() if name != "packageBlobs"} == {"runtimePrincipalId"}
    main = parsed["main.bicep"]
    params = main["modules"]["storage"]["config"]["params"]
    assert _names(params["runtimePrincipalId"]).count("identity") == 1
    assert "deploymentIdentity" in _names(params["deploymentPrincipalId"])
    app = one(parsed, "Microsoft.Web/sites")
    authentication = app["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert authentication["userAssignedIdentityResourceId"] == "deploymentIdentityId"
    assert main["modules"]["functionApp"]["config"]["params"]["deploymentIdentityId"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "deploymentIdentity", "operand_2": "id"}}}
    # No account-wide Owner or Contributor role anywhere any more.
    every = json.dumps(parsed)
    assert "b7e6dc6d-f1e8-4753-8033-0f276bb0955b" not in every  # Storage Blob Data Owner
    # Key Vault: Secrets User on the signing key's secret, not on the vault; the vault must use RBAC.
    secrets_user = main["resources"]["secretsUser"]["config"]["config"]
    assert secrets_user["scope"] == "signingKeySecret"
    assert main["resources"]["signingKeySecret"]["type"] == "Microsoft.KeyVault/vaults/secrets"
    rbac = parsed["modules/preconditions.bicep"]["variables"]["vaultUsesRbac"]["value"]["operator"]
    assert rbac["operands"]["false_value"]["function"]["type"] == "fail"
    assert "keyVaultUsesRbac" in main["modules"]["preconditions"]["config"]["params"]
    # Telemetry and Event Grid keep their single-resource roles.
    role_ids = main["variables"]["roles"]["value"]
    assert set(role_ids) == {"monitoringMetricsPublisher", "keyVaultSecretsUser"}
    every_assignment = resources(parsed, "Microsoft.Authorization/roleAssignments")
    assert all(a["properties"]["principalType"] == "ServicePrincipal" for a in every_assignment)


def test_the_hosts_containers_and_poison_queue_exist_before_the_app(parsed: dict[str, Any]) -> None:
    """The Functions host and the queue trigger would create these; with roles scoped to single
    containers and queues they cannot, so the template makes them, and the app waits for the
    storage module (its roles included)."""
    storage = parsed["modules/storage.bicep"]["resources"]
    assert storage["hostContainers"]["config"]["loop_type"]["detail"]["array_name"] == [
        "azure-webjobs-hosts", "azure-webjobs-secrets"]
    assert storage["eventsQueues"]["config"]["loop_type"]["detail"]["array_name"] == [
        "${tablePrefix}events", "${tablePrefix}events-poison"]
    depends = parsed["main.bicep"]["modules"]["functionApp"]["config"]["dependsOn"]
    assert "storage" in depends and "preconditions" in depends
    settings = parsed["main.bicep"]["modules"]["functionApp"]["config"]["params"]["registrySettings"]
    assert settings["BERTH_CREATE_STORAGE"] == "false"


def test_telemetry_needs_entra(parsed: dict[str, Any]) -> None:
    assert one(parsed, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True


def checkov_binary() -> str:
    local = PROJECT_ROOT / ".venv-tools" / "bin" / "checkov"
    if local.exists():
        return str(local)
    found = shutil.which("checkov")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("checkov is not installed; scripts/test.sh installs it into .venv-tools")
    pytest.skip("checkov is not installed (scripts/test.sh installs it)")


def test_checkov_finds_nothing_unjustified(tmp_path: Path) -> None:
    result = subprocess.run(
        # preconditions.bicep creates nothing and uses fail(), which checkov's parser predates.
        [checkov_binary(), "-d", str(INFRA), "--framework", "bicep", "--output", "json", "--skip-download",
         "--skip-path", "preconditions.bicep"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report.get("results", {}).get("failed_checks", [])]
    assert summary["failed"] == 0, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 20
    skipped = report["results"]["skipped_checks"]
    assert len(skipped) == summary["skipped"]
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "").strip()) > 20, check["check_id"]  # says why


# Run in a deployed app's folder: which of its own modules Python compiles from source on import.
COMPILED_ON_IMPORT = """
import json, os, sys
here = os.getcwd() + os.sep
compiled = []
def watch(event, args):
    if event == "compile" and isinstance(args[1], str) and args[1].startswith(here) and args[1].endswith(".py"):
        compiled.append(args[1][len(here):])
sys.addaudithook(watch)
import function_app
print(json.dumps({"functions": len(function_app.app.get_functions()), "compiled": compiled}))
"""


def import_as_deployed(folder: Path) -> dict[str, Any]:
    """`import function_app` in `folder` as the host does on Azure, where the package is mounted
    read-only (Python writes no bytecode there)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BERTH_")}
    done = subprocess.run([sys.executable, "-c", COMPILED_ON_IMPORT], cwd=folder, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": "", "PYTHONDONTWRITEBYTECODE": "1"}, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_deployment_zip_holds_the_app_and_nothing_else(tmp_path: Path) -> None:
    import zipfile

    out = tmp_path / "berth.zip"
    subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "package.sh"), str(out)], cwd=PROJECT_ROOT,
                   check=True, capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    names = zipfile.ZipFile(out).namelist()
    assert {"function_app.py", "host.json", "requirements.txt", "registry/app.py"} <= set(names)
    # The web page's templates and stylesheet are not Python: they must come along too.
    assert {"registry/ui/templates/base.html", "registry/ui/static/berth.css"} <= set(names)
    assert all(n.split("/")[0] in {"function_app.py", "host.json", "__pycache__", "requirements.txt", "registry"}
               for n in names)
    # The development harness (Azurite's well-known key) and the command line stay out, bytecode too.
    assert not any(n.startswith(("registry/azurite.", "registry/__main__.", "registry/__pycache__/azurite.",
                                 "registry/__pycache__/__main__.")) for n in names)
    # ... and what is left is an app the host can index, without compiling a module of its own.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(out).extractall(unpacked)
    deployed = import_as_deployed(unpacked)
    assert deployed["functions"] >= 7
    assert deployed["compiled"] == []
    # Without the bytecode each cold start compiles them all (what the check above would see).
    for cache in unpacked.rglob("__pycache__"):
        shutil.rmtree(cache)
    assert {"function_app.py", "registry/app.py"} <= set(import_as_deployed(unpacked)["compiled"])
    funcignore = (PROJECT_ROOT / ".funcignore").read_text().split()
    assert {"tests/", ".venv/", "node_modules/", "infra/"} <= set(funcignore)


def test_parameters_that_cannot_start_are_refused_at_deployment(parsed: dict[str, Any]) -> None:
    """Token auth needs a signing key all instances share: without a Key Vault or a key the
    deployment fails (fail()) before the app exists, rather than deploy an app that cannot start."""
    check = parsed["modules/preconditions.bicep"]["variables"]["signingKeyGiven"]["value"]["operator"]
    assert check["type"] == "conditional"
    condition = check["operands"]["condition"]["operator"]  # both empty: fail
    assert condition["type"] == "and"
    assert [operand["function"] for operand in condition["operands"].values()] == [
        {"type": "empty", "parameters": {"item_to_test": "keyVaultName"}},
        {"type": "empty", "parameters": {"item_to_test": "tokenSigningKey"}}]
    assert check["operands"]["true_value"]["function"]["type"] == "fail"
    assert check["operands"]["false_value"] is True
    main = parsed["main.bicep"]
    given = dict(main["modules"]["preconditions"]["config"]["params"])
    given.pop("keyVaultUsesRbac")  # test_identities_hold_only_the_data_roles_...
    assert given == {
        "keyVaultName": "keyVaultName", "tokenSigningKey": "tokenSigningKey",
        "existingIntegrationSubnetId": "existingIntegrationSubnetId",
        "existingPrivateEndpointSubnetId": "existingPrivateEndpointSubnetId"}
    paired = parsed["modules/preconditions.bicep"]["variables"]["subnetsPaired"]["value"]["operator"]
    assert paired["operands"]["true_value"]["function"]["type"] == "fail"  # one subnet without the other
    assert {"type": "min_length", "argument": 1} in main["parameters"]["entraAudience"]["decorators"]


def test_http_concurrency_per_instance_is_set(parsed: dict[str, Any]) -> None:
    app = one(parsed, "Microsoft.Web/sites")
    triggers = app["properties"]["functionAppConfig"]["scaleAndConcurrency"]["triggers"]
    assert triggers["http"]["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    main = parsed["main.bicep"]
    assert main["parameters"]["httpPerInstanceConcurrency"]["default"] == 32
    assert main["modules"]["functionApp"]["config"]["params"]["httpPerInstanceConcurrency"] == (
        "httpPerInstanceConcurrency")


def _yaml(path: Path) -> Any:
    """YAML read with the tools venv's PyYAML (the app's venv has none)."""
    tools = PROJECT_ROOT / ".venv-tools" / "bin" / "python"
    if not tools.exists():
        pytest.skip("the tools venv (scripts/test.sh makes it) is not there")
    script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    read = subprocess.run([str(tools), "-c", script, str(path)], check=True, capture_output=True, text=True)
    return json.loads(read.stdout)


def test_the_azd_template_provisions_main_and_deploys_the_app(parsed: dict[str, Any]) -> None:
    template = _yaml(PROJECT_ROOT / "azure.yaml")
    assert template["infra"] == {"provider": "bicep", "path": "infra", "module": "azd"}
    service = template["services"]["registry"]
    assert {key: service[key] for key in ("project", "language", "host")} == {
        "project": ".", "language": "python", "host": "function"}
    hook = PROJECT_ROOT / template["hooks"]["preprovision"]["posix"]["run"]
    assert hook.exists() and os.access(hook, os.X_OK)
    azd = parsed["azd.bicep"]
    assert azd["modules"]["registry"]["detail"]["path"] == "main.bicep"
    given = json.loads((INFRA / "azd.parameters.json").read_text())["parameters"]
    required = {name for name, parameter in azd["parameters"].items() if parameter["default"] is None}
    assert required <= set(given), required - set(given)  # azd fills every one from its environment
    assert given["tokenSigningKey"]["value"] == "${BERTH_TOKEN_SIGNING_KEY}"
    site = one(parsed, "Microsoft.Web/sites")
    assert "azd-service-name" in json.dumps(site["tags"])
    assert {"azure.yaml", ".azure/"} <= set((PROJECT_ROOT / ".funcignore").read_text().split())


def test_azd_ships_the_bytecode_of_the_app(tmp_path: Path) -> None:
    """azd zips the project folder as .funcignore says; its prepackage hook compiles the app
    first, so the package carries bytecode and the host compiles none of the app on import."""
    hook = _yaml(PROJECT_ROOT / "azure.yaml")["services"]["registry"]["hooks"]["prepackage"]["posix"]
    project = tmp_path / "project"
    project.mkdir()
    for name in ("function_app.py", "host.json", "registry", "scripts/compile-bytecode.sh", "infra/main.bicep"):
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, project / name)
    bin_dir = tmp_path / "bin"  # the hook's python3 is the one the tests run
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    hooked = subprocess.run([hook["shell"], "-c", hook["run"]], cwd=project, capture_output=True, text=True,
                            env={**env, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert hooked.returncode == 0, hooked.stderr
    assert "note:" not in hooked.stderr  # the tests run the app's Python version
    # Another version compiles too (its bytecode is only ignored), and the hook says which to use.
    other = bin_dir / "python-other"
    other.write_text(f'#!/bin/sh\ncase "$2" in *version_info*) echo 3.99; exit 0;; esac\nexec {sys.executable} "$@"\n')
    other.chmod(0o755)
    noted = subprocess.run([hook["shell"], "-c", hook["run"]], cwd=project, capture_output=True, text=True,
                           env={**env, "PYTHON": str(other)})
    runtime = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert noted.returncode == 0 and "Python 3.99" in noted.stderr and f"PYTHON=python{runtime}" in noted.stderr
    ignored = (PROJECT_ROOT / ".funcignore").read_text().split()
    assert "__pycache__/" not in ignored
    for module in ("__main__", "azurite"):  # compiled, but left out with their sources
        assert f"registry/__pycache__/{module}.*" in ignored
        assert list((project / "registry" / "__pycache__").glob(f"{module}.*.pyc"))
        for path in (project / "registry").glob(f"{module}.py"):
            path.unlink()
        for path in (project / "registry" / "__pycache__").glob(f"{module}.*.pyc"):
            path.unlink()
    assert import_as_deployed(project)["compiled"] == []


def test_the_azd_hook_wants_the_audience_and_makes_the_signing_key(tmp_path: Path) -> None:
    """The preprovision hook as azd runs it, with a stand-in `azd` that records `env set`."""
    fake = tmp_path / "bin" / "azd"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "env get-value" ] && exit 1\necho "$@" >> "$AZD_CALLS"\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "AZD_CALLS": str(calls)}
    hook = str(PROJECT_ROOT / "scripts" / "azd-preprovision.sh")
    refused = subprocess.run([hook], env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "BERTH_ENTRA_AUDIENCE" in refused.stderr and not calls.exists()
    made = subprocess.run([hook], env={**env, "BERTH_ENTRA_AUDIENCE": "api://berth-registry"},
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    *command, key = calls.read_text().split()
    assert command == ["env", "set", "BERTH_TOKEN_SIGNING_KEY"]
    assert len(base64.b64decode(key, validate=True)) == 32
    kept = subprocess.run([hook], env={**env, "BERTH_ENTRA_AUDIENCE": "a", "BERTH_TOKEN_SIGNING_KEY": key},
                          capture_output=True, text=True)
    assert kept.returncode == 0 and calls.read_text().count("\n") == 1  # an existing key is kept


def test_hub_spoke_uses_the_given_subnets_and_zones(parsed: dict[str, Any]) -> None:
    """Existing subnets replace the template's VNet; a DNS zone given by id is used as it is, with
    no zone or link of our own (a second copy would break resolution in the hub)."""
    main = parsed["main.bicep"]
    for name in ("existingIntegrationSubnetId", "existingPrivateEndpointSubnetId"):
        assert main["parameters"][name]["default"] == ""
    assert main["parameters"]["privateDnsZoneIds"]["default"] == {}
    chosen = main["variables"]["integrationSubnetId"]["value"]["operator"]["operands"]
    assert chosen["condition"] == "ownNetwork" and chosen["false_value"] == "existingIntegrationSubnetId"
    assert main["modules"]["functionApp"]["config"]["params"]["integrationSubnetId"] == "integrationSubnetId"
    for module in ("storageZones", "appZone", "eventGridZone"):
        config = main["modules"][module]["config"]
        while "config" in config:  # through the loop and the condition
            config = config["config"]
        assert "givenZones" in json.dumps(config["params"]["existingZoneId"]), module
    dns = parsed["modules/private-dns.bicep"]
    assert dns["resources"]["zone"]["config"]["condition"] == "own"
    assert dns["resources"]["registryLink"]["config"]["condition"] == "own"
    output = dns["outputs"]["zoneId"]["value"]["operator"]["operands"]
    assert output["condition"] == "own" and output["false_value"] == "existingZoneId"
