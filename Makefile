# HeliosProxy: the only entry point for humans and CI.
PY      := .venv/bin/python
PG_BIN  ?= /usr/lib/postgresql/15/bin
STAMP   := .venv/.installed

.PHONY: install sysdeps plugins plugin-toolchain test test-unit test-integration lint demo bench run clean

install: $(STAMP) sysdeps plugin-toolchain

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# PostgreSQL 15 server binaries (tests and the demo start their own servers).
sysdeps:
	@bash scripts/sysdeps.sh

plugins: $(STAMP)
	@bash plugins/build.sh

# AssemblyScript compiler for `heliosproxy plugin build` (version pinned in plugins/toolchain/package-lock.json).
# Zig (for Zig and C plugins) comes from PyPI's ziglang, installed into .venv above.
plugin-toolchain: plugins/toolchain/node_modules/.installed

plugins/toolchain/node_modules/.installed: plugins/toolchain/package.json plugins/toolchain/package-lock.json
	cd plugins/toolchain && npm ci --no-audit --no-fund --loglevel=error
	touch $@

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
