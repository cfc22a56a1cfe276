# Two commands on a fresh Debian machine with Python 3.11: `make run`, `make test`.
# Everything they need is set up here: `make run` needs only Python (no root, no
# Node.js); `make test` adds qemu-utils (apt) and s3rver (npm).
# `make install` is the lean set for a host that reaches a real store (an OUTSCALE VM).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST_STAMP := $(VENV)/.installed-host
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PORT ?= 5050
# The command on every shell's PATH when its directory is writable (root): linked only
# when absent, dangling or already this clone's, never re-pointed from another clone.
LINK ?= /usr/local/bin/omi-manifest
COMMAND := $(CURDIR)/$(BIN)/omi-manifest

.PHONY: setup install link qemu-img test-servers test lint run demo bench package clean

# Tests, benchmarks, the embedded server and the AWS CLI (requirements-dev.txt).
setup: $(STAMP)

# Only what `omi-manifest run --poll` against a real store needs (requirements-host.txt).
install: $(HOST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(HOST_STAMP): requirements.txt requirements-host.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-host.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@$(link_command)
	touch $@

$(STAMP): $(HOST_STAMP) requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

define link_command
if [ ! -w "$(dir $(LINK))" ]; then \
  echo "omi-manifest: $(COMMAND) (add $(CURDIR)/$(BIN) to PATH)"; \
elif [ -L "$(LINK)" ] && [ "$$(readlink "$(LINK)")" = "$(COMMAND)" ]; then \
  echo "omi-manifest: $(LINK) is this clone's"; \
elif [ -e "$(LINK)" ]; then \
  echo "omi-manifest: $(LINK) is another install's ($$(readlink -f "$(LINK)")): left alone;" \
    "this clone's is $(COMMAND)"; \
else \
  ln -sfn "$(COMMAND)" "$(LINK)" && echo "omi-manifest: linked $(LINK) to this clone's"; \
fi
endef

link:
	@$(link_command)

# End-to-end tests also run against s3rver, an independent S3 server (npm, pinned in
# package.json); node and npm come from Debian when missing. Only `make test` needs them.
test-servers: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Tests build real disk images with qemu-img (Debian package qemu-utils).
qemu-img:
	@command -v qemu-img >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq qemu-utils >/dev/null; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup test-servers qemu-img lint
	$(BIN)/pytest -n auto --maxprocesses=4 --dist worksteal

run: setup
	$(BIN)/omi-manifest run --port $(PORT)

demo: setup
	$(BIN)/omi-manifest demo

bench: setup qemu-img
	$(BIN)/python -m bench

# Terraform configuration for a stage, fit for Terraform >= 1.0 and AWS provider 5/6:
# `make package STAGE=oos` writes out/oos/ (deploy/package.py says what it changes).
STAGE ?= prod
OUT ?= out/$(STAGE)
package: setup
	$(BIN)/python deploy/package.py --stage $(STAGE) $(OUT)

# The shared link goes only if it is this clone's: another clone's keeps working.
clean:
	@if [ -L "$(LINK)" ] && [ "$$(readlink "$(LINK)")" = "$(COMMAND)" ]; then \
	  rm -f "$(LINK)" && echo "omi-manifest: removed $(LINK)"; fi
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
