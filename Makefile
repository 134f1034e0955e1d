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

.PHONY: demo test test-all system-deps venv bench clean

demo: system-deps venv  ## run the main job on the embedded default
	$(VENV)/bin/finsent demo

test: system-deps venv  ## run the default test suite
	$(VENV)/bin/pytest

test-all: system-deps venv  ## the default suite plus slow tests (training, full evaluation)
	$(VENV)/bin/pytest -m ""

system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null || ! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(LOCAL_WHEELS) $(PIP_EXTRA) -c constraints.txt -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .state .pytest_cache
