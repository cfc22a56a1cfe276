# Two commands on a fresh Debian machine with Python 3.11: `make run`, `make test`.
# Everything they need (apt packages, the virtualenv, the project) is set up here.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup qemu-img test lint run demo bench clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@# The command on every shell's PATH: linked into /usr/local/bin when root.
	@if [ "$$(id -u)" = 0 ] && [ -d /usr/local/bin ]; then \
	  ln -sf "$(CURDIR)/$(BIN)/omi-manifest" /usr/local/bin/omi-manifest && \
	  echo "omi-manifest: linked into /usr/local/bin"; \
	else \
	  echo "omi-manifest: $(CURDIR)/$(BIN)/omi-manifest (add $(CURDIR)/$(BIN) to PATH)"; \
	fi
	touch $(STAMP)

# End-to-end tests also run against s3rver, an independent S3 server (npm, pinned in
# package.json); node and npm come from Debian when missing.
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

test: setup qemu-img lint
	$(BIN)/pytest -n auto --maxprocesses=4 --dist worksteal

run: setup
	$(BIN)/omi-manifest run

demo: setup
	$(BIN)/omi-manifest demo

bench: setup qemu-img
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
