# jobplane: `make demo` runs the example job on the local stack; `make test` runs every check.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?= -n 2

STAGE ?= dev
.PHONY: demo test lint unit e2e bench install system-deps clean package

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

install: $(STAMP)

# Debian tools some tests use: shellcheck (the generated VM scripts), chromium (the dashboard's browser test).
DEBIAN_TOOLS := shellcheck chromium
system-deps:
	@missing=""; for tool in $(DEBIAN_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

PORT ?= 8000
demo: $(STAMP)
	$(PY) -m jobplane.demo --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The fast loop: everything but the end-to-end stacks and the slow builds (Terraform, the wheel).
unit: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS) -m "not e2e and not slow"

# The local stack and the Pub/Sub emulator as real processes over HTTP.
e2e: $(STAMP) system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS) -m e2e

# Deployable artifacts: Chalice's Terraform (functions, API, event rules, S3 notification, stream
# mapping, the dependency layer) made current, plus the tables, bucket and secrets it does not create.
# Then: cd build/package && terraform init && terraform plan -out=tfplan && terraform apply tfplan
PACKAGE_DIR ?= build/package
package: $(STAMP)
	rm -rf $(PACKAGE_DIR)
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(VENV)/bin/chalice package --pkg-format terraform --stage $(STAGE) $(PACKAGE_DIR)
	$(PY) deploy/aws/resources.py --stage $(STAGE) $(PACKAGE_DIR)

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .jobplane .pytest_cache .ruff_cache
