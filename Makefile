# The two commands of the README: `make demo` (set up + run the main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_shm.xml
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp

.PHONY: setup demo test

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@$(VENV)/bin/vizloc-smoke

test: setup
	@$(VENV)/bin/python -m pytest -q test
