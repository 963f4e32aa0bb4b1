# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
WORKDIR ?= runs/demo
# Real benchmark data for the tests that need it (CI sets it to ../shared/data).
EDSR_SHARED_DATA ?= $(abspath ../shared/data)
export EDSR_SHARED_DATA
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint venv clean

$(VENV)/.runtime: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

venv: $(VENV)/.test

demo: $(VENV)/.runtime
	$(VENV)/bin/python -m edsr_jax.demo --config=configs/demo.py --workdir=$(WORKDIR)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.test
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
