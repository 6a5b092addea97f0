# Two commands for a new user: `make demo` and `make test`. Both run `make setup` first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-system test test-slow demo bench lint clean

setup: $(STAMP)

# Reinstall only when the dependency list changes (idempotent, quick otherwise).
# torch==2.13.0 goes first: it is a CPU build on this machine's disk; a plain `torch`
# requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	touch $(STAMP)

# The MQTT broker, GStreamer's RTSP server and Chromium that the tests run for real (Debian
# packages; installed when run as root, otherwise the command to install them is printed).
setup-system:
	bash .ci/system-packages

test: setup setup-system
	$(BIN)/python -m pytest -q

test-slow: setup setup-system
	$(BIN)/python -m pytest -q -m slow

demo: setup
	$(BIN)/edgessl demo --out runs/demo

bench: setup
	$(BIN)/python bench/run_all.py $(BENCH)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy edgessl train export edge_runtime devices

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
