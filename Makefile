# echo20: `make demo` shows the server and client at work, `make test` runs everything.
# Both set up .venv from pyproject.toml first, so a fresh machine needs only Python >= 3.11.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall whenever pyproject.toml changes, or the C accelerator (built in place by the
# editable install, or skipped quietly without a compiler).
STAMP := $(VENV)/.installed

# One list for ruff and mypy: every Python file of the project, tests and tools included.
CHECKED := protocol.py echo_server.py echo_client.py setup.py echo20 tests tools
# The seed's server and client as the article wrote them, untyped on purpose: ruff only.
UNTYPED := examples

.PHONY: help install demo test lint format bench bench-loops bench-pages compare soak test-deploy test-tornado clean

help:
	@echo "make demo    set up .venv, start a server, run a scripted client session, stop"
	@echo "make test    set up .venv, lint, type-check and run the whole test suite"
	@echo "make lint    ruff check, ruff format --check, mypy --strict"
	@echo "make format  ruff format and ruff check --fix"
	@echo "make bench   a quick benchmark matrix (under 3 minutes) into bench-results/"
	@echo "make bench-loops  every loop over TCP, TLS and Unix: docs/benchmark/loops.md (~13 min)"
	@echo "make bench-pages  every other page under docs/benchmark/ (~22 min)"
	@echo "make compare every conformance scenario on every server: docs/conformance.md"
	@echo "make soak    2 minutes of good and hostile clients against the server (not in test)"
	@echo "make test-deploy  install HAProxy where possible, test docs/deploy.md's configuration"
	@echo "make test-tornado Tornado's own IOStream/TCPServer/TCPClient tests against the port"
	@echo "make clean   remove .venv and caches"

$(STAMP): pyproject.toml setup.py echo20/speedups.c
	$(PYTHON) -c 'import sys; sys.exit("echo20 needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py

# The conformance matrix, written and printed: every scenario and observation on the
# Tornado reference, the seed's server and ours on asyncio and uvloop, then every client
# (`echo20-conformance compare --help`; docs/conformance-runner.md, "Comparing servers").
COMPARED := tornado-asyncio tornado-uvloop streams-asyncio streams-uvloop \
	iostream-asyncio iostream-uvloop protocol-asyncio protocol-uvloop seed \
	echo-client tornado-client seed-client
compare: $(STAMP)
	$(BIN)/echo20-conformance compare $(COMPARED) --markdown docs/conformance.md

lint: $(STAMP)
	$(BIN)/ruff check $(CHECKED) $(UNTYPED)
	$(BIN)/ruff format --check $(CHECKED) $(UNTYPED)
	$(BIN)/mypy $(CHECKED)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The quick matrix: every target on every installed loop at 1 x 8 B and 16 x 200 B, one
# short repeat per cell, closed loop (under 3 minutes). `echo20-bench run --help` for
# the full one, --rate/--rates for the open loop; `echo20-bench compare A B` compares
# two runs; `echo20-bench idle` and `cold-start` measure memory per idle connection
# and a fresh server's first clients.
bench: $(STAMP)
	$(BIN)/python -m echo20.bench run --connections 1,16 --sizes 8,200 --warmup 0.2 --duration 0.5 --repeats 1 --ramp-timeout 10

# The published loop comparison page (about 13 minutes): run nothing else meanwhile.
bench-loops: $(STAMP)
	$(BIN)/python -m echo20.bench loops --page docs/benchmark/loops.md --strict --wait-quiet 30

# Every other page under docs/benchmark/ (about 22 minutes): run nothing else meanwhile.
bench-pages: $(STAMP)
	$(BIN)/python tools/bench_pages.py

# Good and hostile clients for 2 minutes, then lost bytes, tracebacks, memory and fds
# checked; e.g. `make soak SOAK_ARGS="--seconds 30 --impl protocol"`.
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python tools/soak.py $(SOAK_ARGS)

# Two pytest workers, each given whole files (a file's session fixtures run once): most
# tests wait on sockets and processes, so two halve the wall time on 2 cores.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Tornado 6.6.1's own iostream, tcpserver and tcpclient tests, unchanged, against the port
# (fetched from its sdist on PyPI once, into .cache/), on both loops: how many apply,
# pass, fail and do not apply, each test that does not apply listed with its reason in
# tools/tornado_tests.py. `make test` runs them too (tests/test_tornado_suite.py).
test-tornado: $(STAMP)
	$(BIN)/python tools/tornado_tests.py --loop asyncio
	$(BIN)/python tools/tornado_tests.py --loop uvloop

# HAProxy in front of two servers with the configuration of docs/deploy.md. Installing
# needs apt and root; where that fails the test says it is skipped, and why.
test-deploy: $(STAMP)
	@command -v haproxy >/dev/null || PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null || \
		{ apt-get install -y haproxy >/dev/null 2>&1 || \
		  { apt-get update >/dev/null 2>&1 && apt-get install -y haproxy >/dev/null 2>&1; }; } || \
		echo "test-deploy: could not install haproxy (apt-get install -y haproxy failed); the test will be skipped"
	$(BIN)/python -m pytest tests/test_deploy.py -rs

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info build echo20/*.so
