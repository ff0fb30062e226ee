"""infra/: every key our templates write is in Azure's published model of its resource type.

`az bicep build` cannot run here (no .NET, no network), so the Azure management SDKs stand in for
Bicep's type check: tests/infra/arm_models.py, run in the tools venv (the SDKs must stay out of the
app's), looks each key path up in the model the SDK's own PUT of that type sends. Checked: unknown
keys, read-only keys, required keys not written, and literals of the wrong kind (an object where
the model wants a list, a string where it wants a bool...). Not checked: enum values, the values of
parameters and expressions, and existing resources (they write nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pycep import BicepParser

from registry.azurite import PROJECT_ROOT
from tests.infra.test_bicep import INFRA, TEMPLATES

TOOLS_PYTHON = PROJECT_ROOT / ".venv-tools" / "bin" / "python"
SCRIPT = PROJECT_ROOT / "tests" / "infra" / "arm_models.py"

# The deployment engine's keys (parent and scope name the URL, dependsOn orders), not the body's;
# the models also have `name` read-only, though Bicep requires it.
BICEP_ONLY = {"name", "parent", "scope", "dependsOn"}

# API versions no azure-mgmt-* release ships as an _attribute_map model: the keys are checked
# against the nearest newer one (type, template's version -> the SDK's), so a key added after
# ours would pass unnoticed there.
NOT_SHIPPED = {
    # azure-mgmt-loganalytics went from 2021-06-01 (12.0.0) to 2025-07-01 (13.1.x).
    ("Microsoft.OperationalInsights/workspaces", "2023-09-01"): "2025-07-01",
    # azure-mgmt-resource's resources never had 2024-03-01 (23.2.0: 2022-09-01; 23.3.0: 2024-07-01).
    ("Microsoft.Resources/resourceGroups", "2024-03-01"): "2024-07-01",
}

# Findings that are not errors: (type, path) -> why.
ACCEPTED: dict[tuple[str, str], str] = {}

Entry = tuple[list[str], str]


def is_expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("operator", "function")


def symbols(template: dict[str, Any]) -> set[str]:
    """What a bare name in the template refers to: parameters, variables, resources, modules, loop variables."""
    names = {name for part in ("parameters", "variables", "resources", "modules") for name in template.get(part, {})}

    def loops(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("loop_type"), dict):
                detail = node["loop_type"].get("detail", {})
                names.update(detail[key] for key in ("item_name", "index_name") if detail.get(key))
            for inner in node.values():
                loops(inner)
        elif isinstance(node, list):
            for inner in node:
                loops(inner)

    loops(template)
    return names


def alternatives(value: Any, names: set[str]) -> list[tuple[str, Any]]:
    """What a value writes, as (kind, literal): both branches of a condition, a for-expression's body."""
    if isinstance(value, dict) and "loop_type" in value:
        return [("loop", value["config"])]
    if is_expression(value):
        operator = value.get("operator", {})
        if operator.get("type") == "conditional":
            operands = operator["operands"]
            return alternatives(operands["true_value"], names) + alternatives(operands["false_value"], names)
        return [("expression", None)]
    if value is None:
        return [("null", None)]
    if isinstance(value, bool):
        return [("bool", value)]
    if isinstance(value, int):
        return [("int", value)]
    if isinstance(value, float):
        return [("float", value)]
    if isinstance(value, list):
        return [("array", value)]
    if isinstance(value, dict):
        return [("object", value)]
    # pycep gives a reference and a string literal alike; a declared name is taken for a reference.
    return [("reference" if value in names else "string", value)]


def segment(key: str) -> str:
    """pycep keeps a quoted key's quotes; an interpolated one is only known at deployment."""
    key = key[1:-1] if len(key) > 1 and key[0] == key[-1] == "'" else key
    return "{*}" if "${" in key else key


def walk(value: Any, path: list[str], names: set[str]) -> Iterator[Entry]:
    for kind, literal in alternatives(value, names):
        yield path, "array" if kind == "loop" else kind
        if kind == "object":
            for key, inner in literal.items():
                yield from walk(inner, [*path, segment(key)], names)
        elif kind == "array":
            for index, element in enumerate(literal):
                yield from walk(element, [*path, f"[{index}]"], names)
        elif kind == "loop":  # a for-expression: an array of its body, whatever the count
            yield from walk(literal, [*path, "[*]"], names)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    config = resource["config"]
    while "loop_type" in config or "condition" in config:
        config = config["config"]
    return config


@pytest.fixture(scope="module")
def checked() -> list[dict[str, Any]]:
    """Every resource our templates create, with what arm_models.py says of it."""
    if not TOOLS_PYTHON.exists():
        pytest.skip("the tools venv (scripts/test.sh makes it) is not there")
    parser = BicepParser()
    resources = []
    for path in TEMPLATES:
        template = parser.parse(file_path=path)
        names = symbols(template)
        for name, resource in template.get("resources", {}).items():
            if resource["existing"]:
                continue  # a reference: it writes nothing
            config = body(resource)
            paths = [entry for key, value in config.items() if key not in BICEP_ONLY
                     for entry in walk(value, [key], names)]
            resources.append({"template": path.relative_to(INFRA).as_posix(), "name": name,
                              "type": resource["type"], "api_version": resource["api_version"], "paths": paths})
    run = subprocess.run([str(TOOLS_PYTHON), str(SCRIPT)], input=json.dumps({"resources": resources}),
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    if "missing" in answer:  # like checkov (test_bicep.py): CI must have them, a developer may not yet
        message = f"the Azure SDKs are not in .venv-tools ({', '.join(answer['missing'])}; requirements-tools.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [{**resource, **result} for resource, result in zip(resources, answer["resources"], strict=True)]


def label(resource: dict[str, Any]) -> str:
    return f"{resource['template']}: {resource['name']} ({resource['type']}@{resource['api_version']})"


def test_every_key_is_in_azures_model_of_the_resource(checked: list[dict[str, Any]]) -> None:
    assert len(checked) > 30  # every template's resources (a type with no model is a finding)
    found = [f"{label(r)} {f['path']}".rstrip() + f": {f['problem']}" for r in checked for f in r["findings"]
             if (r["type"], f["path"]) not in ACCEPTED]
    assert not found, "\n" + "\n".join(found)
    used = {(r["type"], f["path"]) for r in checked for f in r["findings"]}
    assert set(ACCEPTED) <= used, f"accepted but no longer found: {set(ACCEPTED) - used}"


def test_api_versions_are_ones_the_sdk_ships(checked: list[dict[str, Any]]) -> None:
    wrong = []
    for resource in checked:
        key = (resource["type"], resource["api_version"])
        expected = NOT_SHIPPED.get(key, resource["api_version"])
        if resource["module"] is None:
            wrong.append(f"{label(resource)}: no SDK package for the type (arm_models.PACKAGES)")
        elif resource["sdk_api_version"] != expected:
            wrong.append(f"{label(resource)}: checked against {resource['module']} "
                         f"({resource['sdk_api_version']}); the SDK ships {resource['sdk_api_versions']}")
    assert not wrong, "\n" + "\n".join(wrong)
    used = {(r["type"], r["api_version"]) for r in checked}
    assert set(NOT_SHIPPED) <= used, f"listed but no longer used: {set(NOT_SHIPPED) - used}"
