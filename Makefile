# rayruns: `make run` serves on 127.0.0.1:8000, `make test` runs the whole suite,
# `make cluster-test` runs `ray up` of cluster-onprem.yaml against this machine (root, PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: run test fault lint bench soak clean cluster-test test-tools screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[providers]'
	touch $@

# The browser tests drive Debian's chromium (Playwright cannot download a browser here).
CHROMIUM := /usr/bin/chromium
# The PostgreSQL store's tests start a server of their own from Debian's binaries.
PG_BIN_GLOB := /usr/lib/postgresql/*/bin/postgres

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	ls $(PG_BIN_GLOB) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/rayruns serve

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite checks the cluster configs with shellcheck and rsync: install Debian's packages when
# we can (as root with apt); without them those tests skip and say why.
TEST_TOOLS := shellcheck rsync
test-tools:
	@missing=$$(for t in $(TEST_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	fi

# Two invocations, one Ray each: the suite on the session's Ray, then the multi-node tests on
# their own three-node cluster.
test: lint test-tools
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m multinode

# The fault-injection suite alone (it also runs in `make test`).
fault: $(VENV)/.test-deps
	$(BIN)/pytest -q -m fault

# Its own Ray cluster, started by `ray up` over SSH: it cannot share the suite's Ray session.
cluster-test: $(VENV)/.test-deps
	$(BIN)/pytest -q -p no:cacheprovider tests_cluster

# Renews the README's picture of the page (the suite itself writes var/screenshot.png).
screenshot: test-tools
	RAYRUNS_SCREENSHOT=docs/screenshot.png $(BIN)/pytest -q tests/test_page.py -k renders

bench: $(VENV)/.test-deps
	$(BIN)/python -m bench.run

# Not in `make test`: MINUTES (default 10) of mixed traffic against its own server, then leaks
# (runs, actors, descriptors, memory); writes bench/soak_results.json, exits 1 on a leak.
MINUTES ?= 10
soak: $(VENV)/.test-deps
	$(BIN)/python -m bench.soak --minutes $(MINUTES)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
