# simpleloggers — the commands a newcomer and CI run. `make` lists the targets.
CARGO ?= cargo
PYTHON ?= python3
VENV ?= .venv

.PHONY: help test fmt lint unit demo browser-deps chart-test fuzz fuzz-ci chaos chaos-short bench bench-log bench-read bench-ingest bench-memory bench-failover bench-replication kind-up kind-e2e kind-down

help: ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

test: browser-deps fmt lint unit chart-test fuzz-ci ## every test: formatting, clippy, unit, integration, browser and chart tests, and a deterministic run of every fuzz target

browser-deps: ## headless Chromium + chromedriver for tests/observe_browser.rs (apt-get as root; skipped otherwise)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser-deps: chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y chromium chromium-driver || \
			{ apt-get update && apt-get install -y chromium chromium-driver; }; \
	elif [ "$$CI" = true ]; then \
		echo "browser-deps: CI needs chromium and chromium-driver, but this is not root with apt-get" >&2; exit 1; \
	else \
		echo "browser-deps: not root (or no apt-get): chromium not installed; the browser test will skip"; \
	fi

fmt: ## rustfmt check
	$(CARGO) fmt --all -- --check

lint: ## clippy with warnings as errors, every workspace crate and target
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit: ## cargo test, whole workspace (unit + integration tests over loopback, dev Consul included)
	$(CARGO) test --locked --workspace

demo: ## the one-command local cluster
	$(CARGO) run --release --locked -- demo

bench: bench-log bench-read bench-ingest bench-replication bench-failover ## every benchmark in turn (each prints its figures and targets; bench-replication is issue 14's reference run)

bench-log: ## log store benchmark: fdatasync rate, concurrent appends, batched MB/s vs disk bandwidth
	$(CARGO) bench --locked --bench log

bench-read: ## append p50/p99 with and without a reader replaying a large log from disk (BENCH_READ_BYTES, default 1 GiB)
	$(CARGO) bench --locked --bench read

bench-ingest: ## HTTP ingest (1/16/64 conns vs a do-nothing axum ceiling, NDJSON batches) + node memory
	$(CARGO) bench --locked --bench ingest

bench-memory: bench-ingest ## node VmRSS idle and under load (measured by bench-ingest)

bench-failover: ## leader SIGKILL/SIGTERM -> first ack from the new leader, 3 nodes, default timings (TRIALS=20)
	$(CARGO) bench --locked --bench failover

bench-replication: ## 3 nodes acks=all vs 1 node acks=leader vs the HTTP ceiling (1/16/64 conns, NDJSON batches), disk fdatasync p50 + bandwidth, VmRSS, follower catch-up MiB/s (BENCH_CATCHUP_BYTES, default 1 GiB)
	$(CARGO) bench --locked --bench replication

chaos: ## fault injection: 3 nodes + producers, CHAOS_ROUNDS (20) rounds of each fault (CHAOS_FAULTS), invariants after every round, prints the table (RELIABILITY.md)
	$(CARGO) test --locked --test chaos -- --ignored --nocapture --exact chaos_full

chaos-short: ## the short chaos run `make test` includes: one round of each fault, outages of seconds
	$(CARGO) test --locked --test chaos -- --nocapture --exact chaos_short

chart-test: ## chart, image and kind-script tests, no cluster: Helm render + lint (Go SDK), kubernetes-validate, semantics, Consul flags, hadolint, build context, shellcheck, fake-tool script runs
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

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= record_decode segment_scan segment_damage fetch_verify hw_slot ndjson replication_query devconsul_duration devconsul_request

fuzz: ## cargo-fuzz targets in fuzz/ (docs/fuzzing.md), FUZZ_SECONDS each (default 60); installs cargo-fuzz if missing; findings in fuzz/artifacts/
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	@set -e; cd fuzz; for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t seeds/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O -a -s none $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done

FUZZ_RUNS ?= 300000

fuzz-ci: ## part of `make test`: every cargo-fuzz target over its committed seeds, then FUZZ_RUNS (300000) inputs from a fixed seed (deterministic, no time limit to race)
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	@set -e; scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; cd fuzz; for t in $(FUZZ_TARGETS); do \
		mkdir -p "$$scratch/$$t" seeds/$$t; \
		echo "== fuzz-ci $$t: seeds, then $(FUZZ_RUNS) inputs from seed 1"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O -a -s none $$t "$$scratch/$$t" seeds/$$t -- \
			-seed=1 -runs=$(FUZZ_RUNS) -print_final_stats=1; \
	done

kind-up: ## kind cluster + image + chart; waits for exactly one Ready node (the leader)
	bash deploy/kind-up.sh

kind-e2e: ## on the kind cluster: leader-only endpoint, port-forward write, failover time, producer, helm test
	bash deploy/kind-e2e.sh

kind-down: ## delete the kind cluster
	bash deploy/kind-down.sh
