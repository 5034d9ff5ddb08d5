# simpleloggers — the commands a newcomer and CI run. `make` lists the targets.
CARGO ?= cargo
PYTHON ?= python3
VENV ?= .venv

.PHONY: help test fmt lint unit demo bench-log chart-test kind-up kind-e2e kind-down

help: ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

test: fmt lint unit chart-test ## every test: formatting, clippy, unit and integration tests, chart tests

fmt: ## rustfmt check
	$(CARGO) fmt --all -- --check

lint: ## clippy with warnings as errors
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit: ## cargo test (unit + integration tests over loopback)
	$(CARGO) test --locked

demo: ## the one-command local cluster
	$(CARGO) run --release --locked -- demo

bench-log: ## log store benchmark: fdatasync rate, concurrent appends, batched MB/s vs disk bandwidth
	$(CARGO) bench --locked --bench log

chart-test: ## chart tests, no cluster: Helm render + lint (Go SDK), kubernetes-validate, semantics, shellcheck
	@$(VENV)/bin/python -c 'import sys' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	    && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r tests/chart/requirements.txt
	@if ! command -v shellcheck >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "chart-test: installing shellcheck (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; \
	  else \
	    echo "chart-test: shellcheck is missing and this is not root: the shellcheck test is skipped (CI installs it)"; \
	  fi; \
	fi
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/chart

kind-up: ## kind cluster + image + chart; waits for exactly one Ready node (the leader)
	bash deploy/kind-up.sh

kind-e2e: ## on the kind cluster: leader-only endpoint, port-forward write, failover time, producer, helm test
	bash deploy/kind-e2e.sh

kind-down: ## delete the kind cluster
	bash deploy/kind-down.sh
