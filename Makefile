# HeliosProxy: the only entry point for humans and CI.
PY      := .venv/bin/python
PG_BIN  ?= /usr/lib/postgresql/15/bin
STAMP   := .venv/.installed

.PHONY: install sysdeps nodedeps plugins test test-unit test-integration lint demo bench run clean

install: $(STAMP) sysdeps nodedeps

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# PostgreSQL 15 server binaries (tests and the demo start their own servers).
sysdeps:
	@bash scripts/sysdeps.sh

# node-postgres for the TLS client tests (tests/node/package-lock.json pins it).
nodedeps: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

plugins: $(STAMP)
	@bash plugins/build.sh

test: install plugins
	$(PY) -m pytest -q tests

test-unit: install plugins
	$(PY) -m pytest -q tests/unit

lint: install
	.venv/bin/ruff check heliosproxy tests bench
	.venv/bin/mypy

demo: install plugins
	$(PY) scripts/demo.py

bench: install plugins
	$(PY) bench/run.py

run: install
	.venv/bin/heliosproxy run --config config/heliosproxy.yaml

clean:
	rm -rf .venv plugins/build .pytest_cache .mypy_cache bench/results
