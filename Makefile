# The README's two quickstart commands are `make demo` and `make test`; both create .venv on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: env demo test lint typecheck lint-deploy

env:
	.ci/setup-env $(VENV)

demo: env
	$(VENV)/bin/edgereid demo --out demo-out

test: env
	$(PYTHON) -m pytest -n 2 -q
	$(PYTHON) -m ruff check edgereid tests benchmarks deploy
	MYPYPATH=$(VENV)/typing-stubs $(PYTHON) -m mypy edgereid

lint:
	$(PYTHON) -m ruff check edgereid tests benchmarks deploy

typecheck:
	MYPYPATH=$(VENV)/typing-stubs $(PYTHON) -m mypy edgereid

# deploy/ cannot run here (no Jetson): its scripts and container recipe are linted instead (tests/test_deploy.py
# runs the same checks).
lint-deploy: env
	$(VENV)/bin/shellcheck -x deploy/*.sh
	$(VENV)/bin/hadolint deploy/docker/Dockerfile
