# uwm_d2 — the README's two commands are `make demo` and `make test`; everything else supports them.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output
# `make wheelhouse PYTHON_VERSION=3.12 LEAVE_OUT=gpu-image`: cp312 manylinux wheels, minus what
# the GPU machines' image already holds, into wheelhouse-cp312/.
PYTHON_VERSION ?=
LEAVE_OUT ?=
WHEELHOUSE ?= $(if $(PYTHON_VERSION),wheelhouse-cp$(subst .,,$(PYTHON_VERSION)),wheelhouse)
D2_TESTS ?=
# The suite runs one test file per worker, a worker per core (TEST_WORKERS=1: one process, in
# order). Files, not tests, are the unit: a file's module fixtures (a training its tests share)
# are built once.
TEST_WORKERS ?= auto
PYTEST_WORKERS := $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: help install lint format test test-fast test-detectron2 wheelhouse demo bench clean

# One line, before anything installs, when test-detectron2 has no test folder to run.
ifneq ($(filter test-detectron2,$(MAKECMDGOALS)),)
ifeq ($(D2_TESTS),)
$(error D2_TESTS is not set: make test-detectron2 D2_TESTS=/path/to/detectron2-v0.6/tests)
endif
endif

# The help text names variables as $(NAME); they are shown with their values.
HELP_VARS := DEMO_DIR WHEELHOUSE VENV
help:  ## list the targets
	@grep -E '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) \
		| sed $(foreach v,$(HELP_VARS),-e 's|$$($(v))|$($(v))|g') \
		| awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install:  ## create .venv with torch, detectron2 and uwm_d2 (idempotent; seconds when up to date)
	@bash scripts/install.sh $(VENV)

lint: install  ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install  ## apply ruff's formatting and safe fixes
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: install lint wheelhouse  ## the whole test suite (lint included; builds the wheelhouse it tests)
	$(PY) -m pytest -q $(PYTEST_WORKERS)

test-fast: install  ## the edit-test loop: every test but those marked slow (trainings, installs)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

test-detectron2: install  ## detectron2 v0.6's own CPU tests from D2_TESTS=<v0.6 checkout>/tests
	D2_TESTS="$(D2_TESTS)" $(PY) scripts/test_detectron2.py

wheelhouse: install  ## offline wheels into $(WHEELHOUSE)/ (PYTHON_VERSION=3.12 LEAVE_OUT=gpu-image: GPU image)
	@$(PY) scripts/build_wheelhouse.py --out $(WHEELHOUSE) \
		$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(LEAVE_OUT),--leave-out $(LEAVE_OUT))

demo: install  ## phantom data -> COCO -> train -> submission -> score, into $(DEMO_DIR)/ (SEED=N, DATA=root)
	@bash scripts/demo.sh $(PY) $(DEMO_DIR)

bench: install  ## benchmarks (speed goals live here, never in tests)
	@set -e; export PYTHONWARNINGS='ignore:`torch.jit.script` is deprecated:FutureWarning'; \
		for bench in benchmarks/bench_*.py; do echo "== $$bench"; $(PY) $$bench; done

clean:  ## remove generated outputs (keeps .venv and the caches under .cache/)
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis wheelhouse wheelhouse-cp*
