"""Reading a ModelDeployment: schema defaults and the few values derived from the object.

Pure functions over plain dicts. The API server already defaults stored objects; applying the same
defaults here makes the operator correct for objects stored before a default was added, and lets
tests build minimal objects.
"""

from __future__ import annotations

import copy
from typing import Any

from canaria import schema

Object = dict[str, Any]


def with_defaults(value: Any, node: schema.Schema) -> Any:
    """Fill absent fields from `default`s, the way the API server does (defaults are defaulted too)."""
    if node.get("type") == "object" and isinstance(value, dict):
        result = dict(value)
        for key, child in node.get("properties", {}).items():
            if key not in result and "default" in child:
                result[key] = copy.deepcopy(child["default"])
            if key in result:
                result[key] = with_defaults(result[key], child)
        return result
    if node.get("type") == "array" and isinstance(value, list):
        return [with_defaults(item, node["items"]) for item in value]
    return value


def defaulted(md: Object) -> Object:
    """The ModelDeployment with its spec defaulted (metadata and status untouched)."""
    result = dict(md)
    result["spec"] = with_defaults(md.get("spec") or {}, schema.spec_schema())
    return result


def model_name(md: Object) -> str:
    return str(md["spec"]["model"].get("name") or md["metadata"]["name"])


def is_prebuilt_archive(model: Object) -> bool:
    return str(model["storageUri"]).endswith(".mar")


def pvc_source(model: Object) -> tuple[str, str] | None:
    """(claim, path inside the claim) of a pvc:// source, else None."""
    uri = str(model["storageUri"])
    if not uri.startswith("pvc://"):
        return None
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path

