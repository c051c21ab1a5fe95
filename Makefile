# Tokenbridge developer commands. Everything installs what it needs: a venv in .venv, and the test control
# plane binaries built from Go modules into ~/.cache/tokenbridge (reused when present).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
CLUSTER_DIR ?= .cache/cluster
PORT ?= 8080

.PHONY: install binaries run test test-unit test-cluster cluster-up cluster-down clean generate bench

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

binaries:
	bash tests/cluster/build.sh >/dev/null

run: $(STAMP)
	$(VENV)/bin/tokenbridge dev --port $(PORT)

test: $(STAMP) binaries
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

test-cluster: $(STAMP) binaries
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

cluster-up: $(STAMP) binaries
	$(PY) tests/cluster/controlplane.py up --dir $(CLUSTER_DIR)

cluster-down:
	$(PY) tests/cluster/controlplane.py down --dir $(CLUSTER_DIR)

clean: cluster-down
	rm -rf $(VENV) .cache .pytest_cache

# Regenerate what is generated from a source in this repository (CRDs from tokenbridge/api.py, the chart's CRD
# copies and values schema, the CRD field reference); tests fail when a generated file is out of date.
generate: $(STAMP)
	$(PY) crds/generate.py
	$(PY) charts/generate.py
	$(PY) docs/generate_reference.py

# Benchmarks (bench/README.md): Tokenbridge against a bare Falcon+PyJWT floor and a real peer; report in bench/results/.
bench: $(STAMP)
	$(PY) bench/run.py
