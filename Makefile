# Two commands matter to a newcomer: `make quickstart` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installs go through uv with its cache outside the checkout (~/.cache/uv), so a repeat set-up is fast.
EXTRAS ?= operator,train,eval,quantize,serve,dev,bench

.PHONY: help venv test test-node test-unit quickstart crds lint cluster-build cluster-up cluster-down node-deps images bench clean

help:
	@echo "make quickstart   the whole life cycle on this machine with a tiny model (sets up .venv)"
	@echo "make test         every test: unit, workload, control plane, browser, real pods (sets up what it needs)"
	@echo "make test-unit    the pure tests only (API, builders, conditions, reconcile): under a minute"
	@echo "make crds         regenerate crds/ from the typed API"

# pyproject.toml declares ranges; constraints.txt holds the exact versions the project is tested with.
# --compile-bytecode: uv does not compile by default (pip does); without .pyc files every process
# compiles what it imports (import torch: ~4.3 s instead of ~1.5 s on 2 cores).
$(BIN)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

venv: $(BIN)/.installed

crds: venv
	$(BIN)/devops-model crds --write crds/ --docs docs/api.md

# Import layers (import-linter: CLI -> operator | workloads -> kernel; inside the operator handlers ->
# reconcile -> builders/status -> naming/conditions/config) and strict types (mypy) of the kernel and
# the operator. tests/run_all.sh (make test, CI) runs the same.
lint: venv
	$(BIN)/lint-imports
	$(BIN)/mypy

test: venv
	bash tests/run_all.sh

# The real-pods tests: a one-node cluster here (containerd, kubelet, Kubeflow), images built from
# images/ (cached by input hash), examples/kind in pods (docs/control-plane.md). Part of make test; this runs them alone.
test-node: venv
	DEVOPS_MODEL_TEST_NODE=1 bash tests/run_all.sh

# The pure tests (typed API, builders, conditions, reconcile logic): no cluster, no model, < 1 minute.
test-unit: venv
	$(BIN)/python -m pytest -p no:cacheprovider -q -m "not cluster and not slow and not browser" tests/api tests/operator

quickstart: venv
	$(BIN)/devops-model quickstart

# Benchmarks: each bench/<area>.py compares against the tool a user would otherwise pick and writes
# bench/results/<area>.json; report.py turns them into bench/RESULTS.md.
bench: venv cluster-build
	bash bench/setup_llamafactory.sh   # LLaMA-Factory's own venv (the train anchor), outside the repo
	@set -e; for b in bench/quickstart.py bench/train.py bench/head.py bench/data.py bench/eval.py bench/eval_process.py bench/quantize.py bench/serve.py bench/kv_cache.py bench/operator_scale.py; do \
	  if [ -f $$b ]; then echo "== $$b"; $(BIN)/python $$b; fi; done
	$(BIN)/python bench/report.py > /dev/null
	@echo "wrote bench/RESULTS.md"

clean:
	rm -rf $(VENV) .pytest_cache

# A real control plane (etcd + kube-apiserver + kube-controller-manager) on 127.0.0.1; docs/control-plane.md.
# cluster-build builds the binaries once per machine into ~/.cache/devops-model/k8s/ (fast when cached).
# NODE=1 adds a node that runs pods (kubelet, kube-proxy, kube-scheduler, containerd, CoreDNS, Kubeflow's
# training-operator): `make cluster-up NODE=1 && make images`, then helm install / kubectl apply (docs/control-plane.md).
NODE ?=
NODE_FLAG := $(if $(filter 1 yes true,$(NODE)),--node,)

cluster-build: $(if $(NODE_FLAG),node-deps,)
	bash tests/cluster/build.sh $(NODE_FLAG)

# Admin kubeconfig: .cluster/kubeconfig. Ports: CLUSTER_APISERVER_PORT (16443), CLUSTER_ETCD_PORT, ...
cluster-up: cluster-build
	bash tests/cluster/up.sh $(NODE_FLAG)

# Stops everything, the node too: no process, mount, network device or iptables rule is left.
cluster-down:
	bash tests/cluster/down.sh

# Debian packages the node and the image builds use (the release lines the node was tested with are
# checked by tests/cluster/node-deps.sh).
node-deps:
	bash tests/cluster/node-deps.sh

# Builds images/ with buildah on a debootstrapped Debian base (cached by input hash in
# ~/.cache/devops-model/images/) and loads them into the node's containerd; prints how long it took.
images: node-deps
	python3 tests/cluster/images.py load
