# One entry point for a fresh machine: `make up` runs discoverd, `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Go-built kube-apiserver, kubectl and helm are cached outside git, once per machine.
export DISCOVERD_TOOLS_DIR ?= $(HOME)/.cache/discoverd/tools

.PHONY: deps venv tools lint test test-fast up clean image e2e

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The real-node end-to-end suite (tests/e2e/test_node.py: kubelet, containerd, the chart, the
# image) is part of `make test`. It needs root, the node's binaries (built with the other tools)
# and Debian's containerd, runc, containernetworking-plugins, docker.io, mmdebstrap and gcc
# (`make deps` installs them). E2E_NODE=0 leaves the node out: the suite skips, nothing of it built.
E2E_NODE ?= 1
tools:
	bash hack/build-tools.sh $(if $(filter 1,$(E2E_NODE)),--node)

# Debian packages the tests need, installed when missing (apt-get, as root; else it names them).
deps:
	bash hack/deps.sh $(if $(filter 1,$(E2E_NODE)),--node)

lint: venv
	$(BIN)/ruff check operator tests bench hack
	$(BIN)/ruff format --check operator tests bench hack
	$(BIN)/mypy
	$(BIN)/lint-imports

# Test files run in 3 workers (pytest-xdist, whole files per worker so module fixtures stay
# together): most tests wait on real processes rather than use a core, so 3 workers on 2 cores
# halve the wall time (703 s -> 332 s measured); 4 workers are slower again, the cores being
# the limit (727 s against 679 s for 3, 2026-12-07). PYTEST_WORKERS=0 runs them one after another.
PYTEST_WORKERS ?= 3
test: deps venv tools lint
	DISCOVERD_E2E_NODE=$(E2E_NODE) PATH="$(CURDIR)/$(BIN):$$PATH" \
	  $(BIN)/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Without the Kubernetes tools: unit and etcd integration tests only.
test-fast: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -p no:cacheprovider tests/unit tests/integration

# The discoverd image (hack/image.sh, Docker's engine; a private one from Debian's
# docker.io is started when none answers). BASE_IMAGE=local makes the base from
# Debian packages (no image registry needed); the default is python:3.11-slim-bookworm.
IMAGE ?= discoverd:dev
image:
	IMAGE=$(IMAGE) bash hack/image.sh build $(if $(BASE_IMAGE),--base $(BASE_IMAGE))

# Only the end-to-end suite on a real kubelet node (hack/node.sh, tests/e2e/test_node.py), with
# its output shown as it runs: builds the node's binaries (once per machine) and the images, then
# runs the scenario. `make test` runs it too (E2E_NODE above, docs/control-plane.md).
e2e: venv
	bash hack/deps.sh --node
	bash hack/build-tools.sh --node
	DISCOVERD_E2E_NODE=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -rxX -p no:cacheprovider -s tests/e2e/test_node.py $(PYTEST_ARGS)

up: venv
	$(BIN)/discoverd up

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
