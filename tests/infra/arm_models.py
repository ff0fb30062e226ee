"""Azure's published resource models (the azure-mgmt-* SDKs), asked about the keys of Bicep resources.

Run by tests/infra/test_arm_models.py in the tools venv (.venv-tools), where the SDKs are installed:
they must not enter the app's venv. Reads JSON on stdin, writes JSON on stdout; needs only the
standard library and the SDKs.

In: {"resources": [{"type": "Microsoft.Web/sites", "api_version": "2024-04-01",
                    "paths": [[["properties", "siteConfig"], "object"], ...]}]}
    A path's segments are property names, "[0]" for an array's element ("[*]" for a for-expression's
    body) and "{*}" for a computed key. Its kind is what the template writes there: object, array,
    bool, int, float, null, string (a literal), reference (a parameter, variable...) or expression.
    A path's parents come before it.
Out: {"resources": [{"package", "module", "model", "sdk_api_version", "sdk_api_versions",
                     "findings": [{"path", "problem"}]}]}, in the same order,
    or {"missing": [packages]} when an SDK is not installed.

The model of a resource type is the body the SDK's own PUT for that type serializes, in the module
of the template's API version, or (not shipped) of the nearest newer one: no hand-kept table of
model names to get wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

# Resource type prefix (lower case) -> the SDK package whose operations PUT it; the longest wins.
PACKAGES = {
    "microsoft.web": "azure.mgmt.web",
    "microsoft.storage": "azure.mgmt.storage",
    "microsoft.network": "azure.mgmt.network",
    "microsoft.network/privatednszones": "azure.mgmt.privatedns",
    "microsoft.insights/components": "azure.mgmt.applicationinsights",
    "microsoft.operationalinsights": "azure.mgmt.loganalytics",
    "microsoft.eventgrid": "azure.mgmt.eventgrid",
    "microsoft.managedidentity": "azure.mgmt.msi",
    "microsoft.authorization": "azure.mgmt.authorization",
    "microsoft.resources/resourcegroups": "azure.mgmt.resource.resources",
}

ELEMENT = re.compile(r"\[(\d+|\*)\]")  # an array's element: its index, or * for a for-expression's body
VERSION_MODULE = re.compile(r"v(\d{4})_(\d\d)_(\d\d)((?:_[a-z]+)*)")
SCALARS = {"str", "bool", "int", "long", "float", "decimal", "iso-8601", "rfc-1123", "duration", "date",
           "time", "unix-time", "base64", "bytearray"}
STRINGY = {"str", "iso-8601", "rfc-1123", "duration", "date", "time", "base64", "bytearray"}
# What the template may write where the model has a type: a reference or an expression may be anything.
FREE = {"reference", "expression", "null"}
ACCEPTS = {
    "model": {"object"}, "list": {"array"}, "dict": {"object"},
    "bool": {"bool"}, "int": {"int"}, "long": {"int"}, "float": {"int", "float"}, "decimal": {"int", "float"},
    "unix-time": {"int"},
}


def package_for(resource_type: str) -> str | None:
    lowered = resource_type.lower()
    prefixes = [p for p in PACKAGES if lowered == p or lowered.startswith(p + "/")]
    return PACKAGES[max(prefixes, key=len)] if prefixes else None


def api_of(module_name: str) -> str:
    year, month, day, tail = VERSION_MODULE.fullmatch(module_name).groups()
    return f"{year}-{month}-{day}{tail.replace('_', '-')}"


def versions_shipped(package: ModuleType) -> dict[str, str]:
    """API version -> module, for packages that ship several (azure.mgmt.X.vYYYY_MM_DD)."""
    return {api_of(m.name): f"{package.__name__}.{m.name}"
            for m in pkgutil.iter_modules(package.__path__) if VERSION_MODULE.fullmatch(m.name)}


def choose_module(package: ModuleType, api_version: str) -> str:
    """The template's API version, else the nearest newer one shipped, else the newest; single-API
    packages have only their own."""
    shipped = versions_shipped(package)
    if not shipped:
        return package.__name__
    if api_version in shipped:
        return shipped[api_version]
    newer = sorted(v for v in shipped if v > api_version)
    return shipped[newer[0] if newer else max(shipped)]


def type_of_url(url: str) -> str | None:
    """The resource type an ARM URL template addresses, or None for a collection or an action."""
    if "/providers/" not in url:
        if re.fullmatch(r"/subscriptions/\{\w+\}/resourcegroups/\{\w+\}", url, re.IGNORECASE):
            return "microsoft.resources/resourcegroups"
        return None
    tail = url.rsplit("/providers/", 1)[1].split("/")
    if len(tail) % 2 == 0:
        return None
    return "/".join([tail[0], *tail[1::2]]).lower()


@dataclass(frozen=True)
class Put:
    api_version: str
    model: str


# Generated code: module-level request builders, and operation methods that serialize a body and
# call one of them. (Splitting at each def is much faster than one regex across the whole file.)
TOP_LEVEL = re.compile(r"^(?=def |class )", re.MULTILINE)
IN_CLASS = re.compile(r"^(?=    (?:async )?def )", re.MULTILINE)
BUILDER_NAME = re.compile(r"def (build_\w+_request)\(")
API_DEFAULT = re.compile(r'"api-version",\s*(?:self\._api_version or\s*)?"([^"]+)"')
TEMPLATE_URL = re.compile(r'"template_url",\s*"([^"]+)"')
BODY = re.compile(r'_serialize\.body\(\s*\w+,\s*"(\w+)"')
CALL = re.compile(r"\b(build_\w+_request)\(")


@cache
def creations(module_name: str) -> tuple[tuple[str, Put], ...]:
    """Every resource type the SDK module PUTs with a body: (type, API version and body model)."""
    found = set()
    operations = Path(importlib.util.find_spec(f"{module_name}.operations").origin).parent
    for source in operations.glob("*.py"):
        blocks = TOP_LEVEL.split(source.read_text())
        builders = {}
        for block in blocks:
            name = BUILDER_NAME.match(block)
            if name and 'method="PUT"' in block:
                url, api = TEMPLATE_URL.search(block), API_DEFAULT.search(block)
                if url and api and (type_ := type_of_url(url.group(1))):
                    builders[name.group(1)] = (type_, api.group(1))
        methods = (m for block in blocks if builders and block.startswith("class ") for m in IN_CLASS.split(block))
        for method in methods:
            body, call = BODY.search(method), CALL.search(method)
            if body and call and call.group(1) in builders:
                type_, api = builders[call.group(1)]
                found.add((type_, Put(api, body.group(1))))
    return tuple(found)


def puts(module_name: str, resource_type: str) -> set[Put]:
    """How the SDK module creates resources of the type: the API version it sends, the body model."""
    return {put for type_, put in creations(module_name) if type_ == resource_type.lower()}


# A model's shape: ("model", classes) | ("group", members, label) for the "properties" of flattened
# "properties.x" keys | ("list", shape) | ("dict", shape) | ("scalar", name) | ("any",).
@dataclass(frozen=True)
class Member:
    shape: tuple
    readonly: bool
    required: bool


def split_key(key: str) -> list[str]:
    """'properties.odata\\.type' -> ['properties', 'odata.type']: msrest escapes literal dots."""
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


def resolve(type_name: str, models: ModuleType) -> tuple:
    if type_name.startswith("[") and type_name.endswith("]"):
        return ("list", resolve(type_name[1:-1], models))
    if type_name.startswith("{") and type_name.endswith("}"):
        return ("dict", resolve(type_name[1:-1], models))
    if type_name in SCALARS:
        return ("scalar", type_name)
    if type_name == "object":
        return ("any",)
    return ("model", tuple(with_subtypes(getattr(models, type_name), models)))


def with_subtypes(cls: type, models: ModuleType) -> list[type]:
    """A polymorphic model stands for its subtypes too (which one is up to a discriminator value)."""
    found = [cls]
    for mapping in vars(cls).get("_subtype_map", {}).values():  # its own: subtypes inherit the base's
        for name in mapping.values():
            found += [c for c in with_subtypes(getattr(models, name), models) if c not in found]
    return found


@cache
def members(classes: tuple[type, ...], models_name: str) -> dict[str, Member]:
    models = importlib.import_module(models_name)
    tree: dict[str, Any] = {}
    for cls in classes:
        validation = getattr(cls, "_validation", {})
        for attribute, spec in cls._attribute_map.items():
            rules = validation.get(attribute, {})
            if not spec["key"]:  # additional_properties: the model takes keys it does not name
                tree[""] = Member(("any",), False, False)
                continue
            if rules.get("constant"):
                continue  # the SDK sends these itself
            *groups, last = split_key(spec["key"])
            node = tree
            for group in groups:
                node = node.setdefault(group, {})
            node[last] = Member(resolve(spec["type"], models), bool(rules.get("readonly")),
                                bool(rules.get("required")))
    return freeze(tree, classes[0].__name__)


def freeze(tree: dict[str, Any], where: str) -> dict[str, Member]:
    """Nested key dicts -> "group" members, read-only when all inside are, required when any is."""
    out = {}
    for key, node in tree.items():
        if isinstance(node, Member):
            out[key] = node
        else:
            inner = freeze(node, f"{where}.{key}")
            out[key] = Member(("group", inner, f"{where}.{key}"), all(m.readonly for m in inner.values()),
                              any(m.required and not m.readonly for m in inner.values()))
    return out


def members_of(shape: tuple, models_name: str) -> dict[str, Member] | None:
    if shape[0] == "model":
        return members(shape[1], models_name)
    if shape[0] == "group":
        return shape[1]
    return None


def describe(shape: tuple) -> str:
    kind = shape[0]
    if kind == "model":
        return shape[1][0].__name__
    if kind == "group":
        return shape[2]
    if kind in ("list", "dict"):
        return f"{kind} of {describe(shape[1])}"
    return shape[-1] if kind == "scalar" else "any"


def step(shape: tuple, segment: str, models_name: str) -> tuple[Member | None, str | None]:
    """The member a path segment reaches from a shape, or why it reaches none."""
    if shape[0] == "any":
        return Member(("any",), False, False), None
    if shape[0] == "list":
        return (Member(shape[1], False, False), None) if ELEMENT.fullmatch(segment) else (None, "not a list here")
    if shape[0] == "dict":
        return Member(shape[1], False, False), None
    known = members_of(shape, models_name)
    if known is None:
        return None, f"{describe(shape)} has no keys"
    if segment == "{*}":
        return None, f"a computed key, where {describe(shape)} has fixed keys"
    if segment in known:
        return known[segment], None
    hint = [k for k in known if k.lower() == segment.lower()]
    if not hint and "" in known:
        return known[""], None
    problem = f"unknown key in {describe(shape)}"
    if hint:
        problem += f" (the model spells it {hint[0]!r}; ARM ignores case, Bicep warns)"
    else:
        writable = sorted(k for k, m in known.items() if k and not m.readonly)
        problem += f"; it takes: {', '.join(writable)}" if writable else "; Azure sets all its keys"
    return None, problem


def fits(shape: tuple, kind: str) -> bool:
    if kind in FREE or shape[0] == "any":
        return True
    if shape[0] == "scalar":
        name = shape[1]
        return kind == "string" if name in STRINGY else kind in ACCEPTS.get(name, {kind})
    if shape[0] == "group":
        return kind == "object"
    return kind in ACCEPTS[shape[0]]


def check(root: tuple, models_name: str, paths: list[tuple[list[str], str]]) -> list[dict[str, str]]:
    findings: list[dict[str, str]] = []
    shapes: dict[tuple[str, ...], tuple] = {(): root}
    children: dict[tuple[str, ...], set[str]] = {(): set()}
    objects = [((), root)]
    for segments, kind in paths:
        path = tuple(segments)
        parent = shapes.get(path[:-1])
        if parent is None:
            continue  # under a key already reported
        children.setdefault(path[:-1], set()).add(path[-1])
        member, problem = step(parent, path[-1], models_name)
        if member is None:
            findings.append({"path": dotted(path), "problem": problem})
            continue
        if member.readonly:
            findings.append({"path": dotted(path), "problem": "read-only in the model (set by Azure)"})
            continue  # and so is what is under it
        if not fits(member.shape, kind):
            findings.append({"path": dotted(path), "problem": f"the template writes {kind}, "
                                                             f"the model wants {describe(member.shape)}"})
            continue  # its keys would only repeat that
        shapes[path] = member.shape
        if kind == "object" and members_of(member.shape, models_name) is not None:
            objects.append((path, member.shape))
    for path, shape in objects:
        written = children.get(path, set())
        for key, member in members_of(shape, models_name).items():
            exempt = path == () and key == "name"  # Bicep puts it in the URL
            if member.required and not member.readonly and key not in written and not exempt:
                findings.append({"path": dotted((*path, key)), "problem": "required by the model, not written"})
    return findings


def dotted(path: tuple[str, ...]) -> str:
    return "".join(part if ELEMENT.fullmatch(part) else f".{part}" for part in path).lstrip(".")


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def answer(request: dict[str, Any]) -> dict[str, Any]:
    packages = {package_for(r["type"]) for r in request["resources"]} - {None}
    missing = sorted(p for p in packages if not installed(p))
    if missing:
        return {"missing": missing}
    out = []
    for resource in request["resources"]:
        entry: dict[str, Any] = {"package": package_for(resource["type"]), "module": None, "model": None,
                                 "sdk_api_version": None, "sdk_api_versions": [], "findings": []}
        out.append(entry)
        if entry["package"] is None:
            entry["findings"].append({"path": "", "problem": "no SDK package for this type (PACKAGES)"})
            continue
        package = importlib.import_module(entry["package"])
        module_name = choose_module(package, resource["api_version"])
        found = puts(module_name, resource["type"])
        entry.update(module=module_name,
                     sdk_api_versions=sorted(versions_shipped(package)) or sorted({p.api_version for p in found}))
        if len(found) != 1:  # none: a wrong package or type; several: which one would be a guess
            entry["findings"].append({"path": "", "problem": f"not one PUT of the type in {module_name}: {found}"})
            continue
        put = found.pop()
        entry.update(sdk_api_version=put.api_version, model=put.model)
        models_name = f"{module_name}.models"
        root = resolve(put.model, importlib.import_module(models_name))
        entry["findings"] = check(root, models_name, [(path, kind) for path, kind in resource["paths"]])
    return {"resources": out}


if __name__ == "__main__":
    json.dump(answer(json.load(sys.stdin)), sys.stdout)
