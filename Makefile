# Tokenbridge developer commands. Everything installs what it needs: a venv in .venv, and the test control
# plane binaries built from Go modules into ~/.cache/tokenbridge (reused when present).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
CLUSTER_DIR ?= .cache/cluster
# make cluster-up NODE=1: also a node (kubelet, containerd; root) running the images built by image/
NODE ?=
PORT ?= 8080
# every runtime and dev dependency pinned (make lock); make install, the Dockerfile and the wheel test install with it
CONSTRAINTS := constraints.txt
LOCK_VENV   := .cache/lock-venv

.PHONY: install binaries run test test-unit test-cluster cluster-up cluster-down clean generate bench lock image lint

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

install: $(STAMP)

binaries:
	bash tests/cluster/build.sh >/dev/null

run: $(STAMP)
	$(VENV)/bin/tokenbridge dev --port $(PORT)

test: $(STAMP) binaries
	$(PY) -m pytest $(PYTEST_ARGS)

# What CI checks before the tests (and .pre-commit-config.yaml before a commit): lint, format, types, import layers.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-unit: $(STAMP)
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

test-cluster: $(STAMP) binaries
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

cluster-up: $(STAMP) binaries
	$(PY) -m tests.support.controlplane up --dir $(CLUSTER_DIR) $(if $(NODE),--node)

# The OCI image without a container engine (image/README.md; root): Debian bookworm's python3 from mmdebstrap, the
# locked wheel in a venv, assembled with umoci; cached by its inputs. Prints the OCI archive and the reference.
image: $(STAMP)
	TOKENBRIDGE_PYTHON=$(PY) bash image/build.sh

cluster-down:
	$(PY) -m tests.support.controlplane down --dir $(CLUSTER_DIR)

# Re-pin $(CONSTRAINTS) to the newest versions pyproject.toml allows (runtime + dev extras), as pip resolves them in
# a fresh venv. Run it after changing a dependency, then make install and make test.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	{ echo '# $(CONSTRAINTS): every runtime and dev dependency of tokenbridge, pinned. Used as `pip install -c $(CONSTRAINTS)`'; \
	  echo '# by make install, the Dockerfile and tests/unit/test_wheel_install.py: it fixes versions, installs nothing itself.'; \
	  echo '# Regenerate with `make lock` (a fresh venv, pip install -e ".[dev]", pip freeze); do not edit by hand.'; \
	  echo "# Resolved with $$($(LOCK_VENV)/bin/python -m pip --version | cut -d' ' -f1-2) on $$($(LOCK_VENV)/bin/python -c \
	    'import platform; print("Python", platform.python_version(), platform.system())')."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable --exclude tokenbridge; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

clean: cluster-down
	rm -rf $(VENV) .cache .pytest_cache

# Regenerate what is generated from a source in this repository (CRDs from tokenbridge/specs.py, the chart's CRD
# copies and values schema, the CRD field reference); tests fail when a generated file is out of date.
generate: $(STAMP)
	$(PY) crds/generate.py
	$(PY) charts/generate.py
	$(PY) docs/generate_reference.py

# Benchmarks (bench/README.md): Tokenbridge against a bare Falcon+PyJWT floor and a real peer; report in bench/results/.
bench: $(STAMP)
	$(PY) bench/run.py
