"""The CRD files are generated from canaria.schema and must not drift from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from canaria import schema, spec

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = [
    ROOT / "crds" / "serving.canaria.dev_modeldeployments.yaml",
    ROOT / "charts" / "canaria" / "crds" / "serving.canaria.dev_modeldeployments.yaml",
]


def walk(node: schema.Schema, path: str = "spec"):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{key}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def test_crd_files_match_the_schema_module():
    expected = schema.custom_resource_definition()
    for path in CRD_FILES:
        assert path.is_file(), f"{path} is missing: run `make crds`"
        assert yaml.safe_load(path.read_text()) == expected, f"{path} is stale: run `make crds`"


def test_every_field_has_a_description_for_kubectl_explain():
    missing = [
        path
        for path, node in walk(schema.spec_schema())
        if not node.get("description")
        and node.get("type") in ("object", "array", "string", "integer", "number", "boolean")
        and not path.endswith("[]")
    ]
    assert missing == []


def test_defaults_are_valid_against_enums_and_bounds():
    for path, node in walk(schema.spec_schema()):
        if "default" not in node:
            continue
        default = node["default"]
        if "enum" in node:
            assert default in node["enum"], path
        if "minimum" in node:
            assert default >= node["minimum"], path
        if "maximum" in node:
            assert default <= node["maximum"], path


def test_defaulting_fills_nested_sections_like_the_api_server():
    md = spec.defaulted({"metadata": {"name": "m"}, "spec": {"model": {"version": "1", "storageUri": "s3://b/k"}}})
    serving = md["spec"]["serving"]
    assert serving["replicas"] == 1
    assert serving["workers"] == {"min": 1, "max": 1}
    assert serving["resources"]["limits"] == {"memory": "4Gi"}
    assert md["spec"]["model"]["optimization"] == {"quantization": "None", "torchscript": False}
    assert md["spec"]["rollout"]["steps"] == [{"weight": 10}, {"weight": 50}]
    assert md["spec"]["rollout"]["analysis"]["metrics"][0]["builtin"] == "ErrorRate"
    assert md["spec"]["monitoring"]["serviceMonitor"]["interval"] == "15s"


def test_defaulting_keeps_what_the_user_set():
    md = spec.defaulted(
        {
            "metadata": {"name": "m"},
            "spec": {
                "model": {"version": "1", "storageUri": "s3://b/k"},
                "serving": {"replicas": 0, "workers": {"min": 2}},
            },
        }
    )
    assert md["spec"]["serving"]["replicas"] == 0
    assert md["spec"]["serving"]["workers"] == {"min": 2, "max": 1}


def test_the_builtin_handlers_are_exactly_the_handler_files_the_packager_packs(tmp_path):
    from canaria.package.handlers import SHARED_HANDLER_MODULES, resolve_handler

    shipped = {path.stem for path in (ROOT / "model_handlers").glob("*.py")} - {"__init__"}
    shipped -= {Path(module).stem for module in SHARED_HANDLER_MODULES}
    assert set(schema.BUILTIN_HANDLERS) == shipped
    for name in schema.BUILTIN_HANDLERS:
        manifest_handler, entries = resolve_handler(name, tmp_path)
        assert manifest_handler == f"{name}.py"
        assert all(Path(entry.source).is_file() for entry in entries), name
    assert ", ".join(schema.BUILTIN_HANDLERS) in schema.model_schema()["properties"]["handler"]["description"]


def test_pvc_source_is_split_into_claim_and_path():
    assert spec.pvc_source({"storageUri": "pvc://models/cifar/v1"}) == ("models", "cifar/v1")
    assert spec.pvc_source({"storageUri": "s3://b/k"}) is None
