# Canaria's developer entry points. `make demo` and `make test` are the two README commands.
SHELL := /bin/bash
VENV ?= .venv
EXTRAS ?= serving dev examples
PY := $(VENV)/bin/python
export KUBECONFIG := $(CURDIR)/.devcluster/kubeconfig
export PATH := $(CURDIR)/.devcluster/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help deps venv tools cluster cluster-down demo demo-stop test test-unit lint operator crds chart-test clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

# Exactly the versions in uv.lock (--locked: fails if pyproject.toml changed without `uv lock`).
$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet uv
	UV_PROJECT_ENVIRONMENT=$(VENV) uv sync --quiet --locked --python python3.11 $(addprefix --extra ,$(EXTRAS))
	touch $@

venv: $(VENV)/.installed ## Python environment with the operator, TorchServe and the dev tools

deps: ## System packages: Java 17 (TorchServe), iproute2 (the pod network)
	@bash hack/install-deps.sh

tools: ## Build (or reuse) the pinned control-plane binaries, kubectl and helm
	bash devcluster/build.sh

cluster: venv tools ## Start the local control plane (idempotent); writes .devcluster/kubeconfig
	$(PY) -m devcluster up

cluster-down: ## Stop every process `make cluster` started and remove its state
	@if [ -x $(PY) ]; then $(PY) -m devcluster down; else echo "no environment: nothing to stop"; fi

demo: deps cluster ## The main job on the local cluster: CRD, operator, the CIFAR-10 example
	PYTHONPATH=$(CURDIR) $(PY) hack/demo.py

demo-stop: ## Stop the operator `make demo` left running (the cluster and the demo's pods stay)
	@if [ -x $(PY) ]; then PYTHONPATH=$(CURDIR) $(PY) hack/demo.py --stop-operator; else echo "no environment: nothing to stop"; fi

operator: venv ## Run the operator in the foreground against $$KUBECONFIG
	$(PY) -m canaria run

crds: venv ## Regenerate the CRD files from operator/canaria/schema.py
	$(PY) -m canaria crd > crds/serving.canaria.dev_modeldeployments.yaml
	mkdir -p charts/canaria/crds && cp crds/serving.canaria.dev_modeldeployments.yaml charts/canaria/crds/

lint: venv ## ruff, mypy and the import layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-unit: venv tools ## Pure tests only (no cluster, no TorchServe)
	$(PY) -m pytest -m "not cluster and not torchserve"

chart-test: venv tools ## The Helm chart: lint, render, install on the local cluster
	$(PY) -m pytest tests/unit/test_chart_render.py tests/unit/test_chart_monitoring.py tests/unit/test_chart_alerts.py \
		tests/integration/test_chart.py tests/integration/test_chart_monitoring.py

test: deps venv tools lint ## Every test tier: unit, control plane, TorchServe data plane
	$(PY) -m pytest

clean: cluster-down
	rm -rf $(VENV) .devcluster
