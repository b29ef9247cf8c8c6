# HeliosProxy: the only entry point for humans and CI.
PY      := .venv/bin/python
PG_BIN  ?= /usr/lib/postgresql/15/bin
STAMP   := .venv/.installed
COMPILED := .venv/.compiled

.PHONY: install sysdeps nodedeps plugins plugin-toolchain test test-unit test-integration lint demo bench run clean test-isolation

install: $(STAMP) $(COMPILED) sysdeps nodedeps plugin-toolchain

$(STAMP): pyproject.toml setup.py
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	HELIOS_NO_COMPILE=1 $(PY) -m pip install -q -e '.[test]'  # compiled just below, once
	touch $(STAMP)

# The hot modules compiled to C extensions next to their sources (mypyc via setup.py; the list is
# HOT_MODULES in heliosproxy/_compiled.py), rebuilt when one of them changes. The test suite runs
# against this build; HELIOS_PURE=1 runs the same .py files instead (tests/unit/test_compiled.py).
HOT_SRC := $(shell sed -n 's/^    "\(heliosproxy\.[a-z_.]*\)",.*/\1/p' heliosproxy/_compiled.py | tr . / | sed 's/$$/.py/')
$(COMPILED): setup.py heliosproxy/_compiled.py $(HOT_SRC) | $(STAMP)
	$(PY) setup.py -q build_ext --inplace -j 2
	touch $@

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
	rm -rf .venv plugins/build .pytest_cache .mypy_cache bench/results build heliosproxy/_compiled.json *__mypyc*.so
	find heliosproxy -name '*.so' -delete

# Model-based isolation test (issue 9), long: make test-isolation STEPS=10000 SEED=7 [CLIENTS=3 POOL=1 EXCLUDE=kind,...]
comma := ,
STEPS ?= 10000
SEED ?= 9
test-isolation: install plugins
	ISOLATION_STEPS=$(STEPS) ISOLATION_SEED=$(SEED) ISOLATION_CLIENTS=$(CLIENTS) \
	ISOLATION_POOL=$(or $(POOL),1$(comma)2) ISOLATION_EXCLUDE=$(EXCLUDE) \
	$(PY) -m pytest -q -s tests/integration/test_isolation_model.py
