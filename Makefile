# The README's two quickstart commands are `make demo` and `make test`; both create .venv on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: env demo test lint typecheck

env:
	.ci/setup-env $(VENV)

demo: env
	$(VENV)/bin/edgereid demo --out demo-out

test: env
	$(PYTHON) -m pytest -n 2 -q
	$(PYTHON) -m ruff check edgereid tests benchmarks
	MYPYPATH=$(VENV)/typing-stubs $(PYTHON) -m mypy edgereid

lint:
	$(PYTHON) -m ruff check edgereid tests benchmarks

typecheck:
	MYPYPATH=$(VENV)/typing-stubs $(PYTHON) -m mypy edgereid
