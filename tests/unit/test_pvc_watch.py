"""The PVC watch reacts only to claims a ModelDeployment reads from: other workloads' claims run no handler.
(tests/integration/test_operator.py checks that a model's claim appearing reconciles exactly its readers.)"""

from __future__ import annotations

import kopf

import canaria.handlers  # noqa: F401  (registers the operator's Kopf handlers)


def test_the_claim_handler_runs_only_for_claims_a_model_reads_from() -> None:
    registry = kopf.get_default_registry()
    watching = registry._watching.get_all_handlers()
    (handler,) = [h for h in watching if "persistentvolumeclaims" in (h.selector.plural, h.selector.any_name)]
    assert handler.when is not None, "every claim of the watched namespaces would run the handler"
    index = {("models", "weights"): ["cifar10"], ("models", None): ["from-https"]}
    assert handler.when(namespace="models", name="weights", model_deployments=index)
    assert not handler.when(namespace="models", name="scratch", model_deployments=index)
    assert not handler.when(namespace="elsewhere", name="weights", model_deployments=index)
