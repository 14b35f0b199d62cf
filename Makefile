# mixelbo developer commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint format typecheck pytest docs bench clean demo compare

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,train]" -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

# `make demo`: train the paper's objective on the embedded dataset on CPU, evaluate, report.
# The GAN term starts at step 300 (the discriminator at 200): on so short a budget an early
# adversarial term swamps the reconstruction.
DEMO_RUN ?= runs/demo
DEMO_REPORT ?= reports/demo
DEMO_TRAIN_FLAGS ?= --config cpu-32 --steps 600 --lr 1e-3 --disc-start-step 200 --gan-start-step 300
DEMO_EVAL_FLAGS ?= --n-test 1000

demo: $(STAMP)
	@if [ -d $(DEMO_RUN)/checkpoints ]; then resume=--resume; fi; \
	set -x; $(VENV)/bin/mixelbo-train $(DEMO_TRAIN_FLAGS) --run-dir $(DEMO_RUN) $$resume
	$(VENV)/bin/mixelbo-eval $(DEMO_RUN) --out $(DEMO_REPORT) $(DEMO_EVAL_FLAGS)
	@echo "demo report: $(CURDIR)/$(DEMO_REPORT)/report.html (Markdown: report.md)"

# `make compare`: one model and step budget with mixture, vae, beta-vae (0.1 and 10).
COMPARE_OUT ?= reports/compare
COMPARE_FLAGS ?= --config cpu-32 --steps 300 --lr 1e-3 --n-test 1000 \
	--set disc_start_step=100 --set gan_start_step=150

compare: $(STAMP)
	$(VENV)/bin/mixelbo-compare --out $(COMPARE_OUT) $(COMPARE_FLAGS)

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
