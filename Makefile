# The two commands of the README, plus the set-up they share. Every step is idempotent and
# skips itself when already done (stamp files), so a warm `make test` starts the tests at once.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.finsent-installed
# Extra pip options, e.g. PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" on a machine
# whose default index would otherwise hand out a CUDA build of torch.
PIP_EXTRA ?=
# Where this machine kind keeps its local CPU build of torch; used only if present.
LOCAL_WHEELS := $(shell [ -d /opt/wheels ] && echo --find-links /opt/wheels)
# chromium: the dashboard's browser test (headless, driven by Playwright)
APT_PACKAGES := prometheus prometheus-alertmanager chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help demo test test-all lint system-deps venv bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

demo: system-deps venv  ## run the main job on the embedded default
	$(VENV)/bin/finsent demo

# The suite runs on TEST_WORKERS processes (pytest-xdist, idle workers steal queued tests): most of its time is
# spent waiting on real brokers, timers and child processes, not on the CPU (load ~0.9 on 2 cores with two
# workers), so three workers on two cores take it from ~20 min to ~9. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3

test: system-deps venv lint  ## lint, then the default test suite
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal

# mypy checks the whole package (every room's shell too: check_untyped_defs), and the ground floor and the pure
# cores strictly (pyproject [tool.mypy] overrides).
lint: venv  ## ruff check, ruff format --check, mypy, import-linter contracts (layers, pure cores)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python scripts/lint_view.py >/dev/null
	cd .lint && PYTHONPATH=. ../$(VENV)/bin/lint-imports --config ../pyproject.toml --no-cache
	cd .lint && PYTHONPATH=. ../$(VENV)/bin/mypy --config-file ../pyproject.toml --cache-dir ../.mypy_cache \
		-p finsent

test-all: system-deps venv lint  ## the default suite plus slow tests (training, full evaluation)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal -m ""

research-model: venv  ## build the research variant of MODEL_CARD-research.md (needs ../shared/data; ~45 min on 2 cores)
	$(VENV)/bin/finsent train --run-config configs/train-minilm-research-events-4ep.toml --version 20261126-research-events-4ep

system-deps:  ## install the Debian packages (prometheus, alertmanager, chromium) if missing
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null || ! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi
	@# Debian's own python3 has no ensurepip without python3-venv: `python3 -m venv` then fails half-way
	@if ! $(PY) -c 'import ensurepip' 2>/dev/null; then \
	  echo "installing python3-venv (python3 -m venv needs it)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv; \
	fi

venv: $(STAMP)  ## the virtual environment in .venv with finsent and its dev tools

$(STAMP): pyproject.toml constraints.txt
	@# a venv that a failed `python3 -m venv` left without pip is made again, not skipped
	test -x $(VENV)/bin/pip || { rm -rf $(VENV) && $(PY) -m venv $(VENV); } || \
	  { echo "error: $(PY) -m venv failed: install python3-venv (make system-deps does)"; exit 2; }
	$(VENV)/bin/pip install -q $(LOCAL_WHEELS) $(PIP_EXTRA) -c constraints.txt -e '.[dev]'
	touch $@

clean:  ## remove .venv, .state and caches
	rm -rf $(VENV) .state .pytest_cache .lint .mypy_cache .ruff_cache
