# kairos-py: `make run` builds a Debian-based Kairos ISO and boots it; `make test` runs every test.
SHELL := /bin/bash
PY := .venv/bin/python
OUT ?= out

.PHONY: setup test unit run lint bench clean

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/test.sh $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest -q tests/unit

run: setup
	.venv/bin/kairos build --source debian:bookworm --output $(OUT) --format iso
	.venv/bin/kairos vm run $(OUT)/kairos.iso --serial-log $(OUT)/serial.log --timeout 600 \
		--show-console --until-login --state --shutdown

lint: setup
	$(PY) -m pytest -q tests/unit/test_linters.py

bench: setup
	$(PY) bench/config_bench.py

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
