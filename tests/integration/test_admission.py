"""Bad input is rejected at admission by the real API server, with a message naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import kubectl
from tests.support.manifests import example_model_deployment

pytestmark = pytest.mark.cluster
CORPUS = yaml.safe_load((Path(__file__).parent / "invalid_corpus.yaml").read_text())


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def dry_run_apply(body: dict[str, Any]) -> str:
    result = kubectl("apply", "-n", "default", "--dry-run=server", "-f", "-", input=yaml.safe_dump(body), check=False)
    return result.stderr if result.returncode else ""


def test_corpus_is_large_and_distinct():
    assert len(CORPUS) >= 40
    assert len({case["case"] for case in CORPUS}) == len(CORPUS)


def test_the_valid_base_is_accepted(crd_installed):
    assert dry_run_apply(example_model_deployment()) == ""


@pytest.mark.parametrize(
    "query",
    [
        'sum(rate(ts_inference_requests_total{namespace="{{namespace}}", track="{{ track }}"}[{{interval}}]))',
        "sum(rate(ts_inference_requests_total{{{track}}}[5m]))",  # a selector's brace right before a variable
    ],
)
def test_queries_whose_variables_all_close_are_accepted(crd_installed, query):
    analysis = {"metrics": [{"name": "requests", "query": query, "min": 0}]}
    assert dry_run_apply(example_model_deployment(rollout={"analysis": analysis})) == ""


@pytest.mark.parametrize("case", CORPUS, ids=[case["case"] for case in CORPUS])
def test_invalid_object_is_rejected_with_its_message(crd_installed, case):
    body = merged(example_model_deployment(), {"spec": case.get("spec", {}), "metadata": case.get("metadata", {})})
    error = dry_run_apply(body)
    assert error, f"{case['case']}: accepted, but should be rejected"
    assert case["message"] in error, f"{case['case']}: the user sees {error!r}"
