# uwm_d2 — the README's two commands are `make demo` and `make test`; everything else supports them.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: help install lint format test demo bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install:  ## create .venv with torch, detectron2 and uwm_d2 (idempotent; seconds when up to date)
	@bash scripts/install.sh $(VENV)

lint: install  ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install  ## apply ruff's formatting and safe fixes
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: install lint  ## the whole test suite (lint included)
	$(PY) -m pytest -q

demo: install  ## phantom data -> COCO -> train -> submission -> score, into $(DEMO_DIR)/
	@bash scripts/demo.sh $(PY) $(DEMO_DIR)

bench: install  ## benchmarks (speed goals live here, never in tests)
	@set -e; for bench in benchmarks/bench_*.py; do echo "== $$bench"; $(PY) $$bench; done

clean:  ## remove generated outputs (keeps .venv and the wheel cache)
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis
