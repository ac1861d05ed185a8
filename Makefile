# One task runner; CI calls `make test` unchanged (.ci/run).
# Every target installs what it needs itself: Debian packages (when root), the virtualenv
# and the Python packages. Nothing is downloaded at run time beyond package registries.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
APT_PACKAGES := mosquitto victoria-metrics socat openssl chromium
DEMO_SECONDS ?= 0

.PHONY: help venv apt test fuzz unit integration check lint format demo stack-up stack-down clean bench-edge bench-edge-rss bench-stream bench-sink bench-alerts

help:
	@echo "make demo    run the whole system on the local stack (DEMO_SECONDS=N to stop after N s)"
	@echo "make test    install everything, then run unit and integration tests"
	@echo "make check   ruff lint + format check, mypy"
	@echo "make fuzz    property tests with new random examples (FUZZ_RUNS=10); make test uses a fixed set"
	@echo "make bench-edge | bench-stream | bench-sink | bench-alerts   benchmarks against an in-run baseline"
	@echo "make bench-edge-rss   the edge agent's RSS over SOAK_MINUTES (default 30)"
	@echo "              (BENCH_QUIX=1 make bench-stream also runs Quix Streams, installed into .venv-quix)"

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing; run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

unit: venv
	$(BIN)/pytest -m "not integration" tests

integration: venv apt
	$(BIN)/pytest -m integration tests

test: venv apt
	$(BIN)/pytest tests

# property tests with fresh random examples, FUZZ_RUNS times (make test repeats one fixed set)
FUZZ_RUNS ?= 10
fuzz: venv
	for run in $$(seq $(FUZZ_RUNS)); do \
	  HYPOTHESIS_PROFILE=explore $(BIN)/pytest -q -p no:cacheprovider \
	    $$(grep -rl "from hypothesis" tests --include=test_*.py) || exit 1; \
	done

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: check

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: venv apt
	$(BIN)/climastream stack up

stack-down: venv
	$(BIN)/climastream stack down

demo: venv apt
	$(BIN)/climastream demo --seconds $(DEMO_SECONDS)

bench-edge: venv apt
	$(PY) benchmarks/bench_edge.py

# the agent's RSS each minute over SOAK_MINUTES on the demo gateway and devices, 10x faster
bench-edge-rss: venv apt
	$(PY) benchmarks/soak_edge_rss.py --minutes $${SOAK_MINUTES:-30}

# Faust KPI job vs a plain aiokafka floor; + Quix Streams peer if BENCH_QUIX=1 or .venv-quix exists
bench-stream: venv apt
	$(PY) benchmarks/bench_stream.py --events $${BENCH_EVENTS:-200000}

clean:
	-$(BIN)/climastream stack down
	rm -rf $(VENV) .venv-quix .stack .demo .pytest_cache .mypy_cache .ruff_cache

# points/s of the sink's writer vs influxdb-client's default usage, same data, same run
bench-sink: venv apt
	$(PY) benchmarks/bench_sink.py

# Reading produced to Kafka -> alert e-mail at a real SMTP server: median and p99.
bench-alerts: venv apt
	$(PY) benchmarks/bench_alerts.py
