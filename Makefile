# The two commands of the README: `make demo` (set up + run the main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_shm.xml
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp

.PHONY: setup demo demo-all demo-smoke test

setup:
	@bash scripts/bootstrap.sh

# Generate a small indoor world, train the room classifier (fast preset), score it with vizloc-eval
# (worlds and bundles cached under .cache/demo/, keyed by world + preset + code). Reports: demo_out/.
demo: setup
	@$(VENV)/bin/python scripts/demo.py room_classifier

# The same for every built-in localizer on its world.
demo-all: setup
	@$(VENV)/bin/python scripts/demo.py all

# The node with the example plugin on generated frames (plumbing check, seconds).
demo-smoke: setup
	@$(VENV)/bin/vizloc-smoke

test: setup
	@$(VENV)/bin/python -m pytest -q test
