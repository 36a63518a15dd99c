"""Reading a ModelDeployment: schema defaults and the few values derived from the object.

Pure functions over plain dicts. The API server already defaults stored objects; applying the same
defaults here makes the operator correct for objects stored before a default was added, and lets
tests build minimal objects.
"""

from __future__ import annotations

from typing import Any

from canaria import schema

Object = dict[str, Any]


def defaulted(md: Object) -> Object:
    """The ModelDeployment with its spec defaulted (metadata and status untouched)."""
    result = dict(md)
    result["spec"] = schema.with_defaults(md.get("spec") or {}, schema.spec_schema())
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
