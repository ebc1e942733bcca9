# Entry points: demo, run, test, lint, bench. Everything a fresh machine needs is installed here.
# Any Python >= 3.11: the newest found on the PATH unless PY is given (make test PY=python3.12).
PY ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo run test lint fmt bench bench-journal soak clean venv stack rabbitmq-stomp lock test-latest

venv: $(STAMP)

# Every dependency's version comes from constraints.txt (the lock): a release elsewhere cannot change the product.
LOCK := constraints.txt

$(STAMP): pyproject.toml $(LOCK)
	@test -n "$(PY)" || { echo "make: no Python >= 3.11 found on the PATH (set PY=/path/to/python3.11+)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[test,dev]'
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges to today's newest releases and write them to the lock; review and test the diff.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock && .venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q '.[test,dev,bench]'
	{ sed -n '1,2p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude hq-gateway; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "constraints.txt refreshed: git diff constraints.txt, then make test"

# Scheduled-style check, never part of CI: does the suite still pass on the newest releases (no lock)?
test-latest: $(NODE_STAMP) rabbitmq-stomp vendor chromium
	rm -rf .venv-latest && $(PY) -m venv .venv-latest && .venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q -e '.[test]'
	.venv-latest/bin/python -m pip freeze --exclude hq-gateway | diff $(LOCK) - | grep '^[<>]' || echo "newest releases = the lock"
	.venv-latest/bin/python -m pytest -q

# make demo PORT=8081 SIM_PORT=8091: other ports for the gateway (default 8080) and the simulator (8090).
demo: $(STAMP) vendor
	$(BIN)/hq-gateway demo $(if $(PORT),--port $(PORT)) $(if $(SIM_PORT),--simulator-port $(SIM_PORT))

# The docker-compose.yml topology from local binaries (redis-server, RabbitMQ, simulator, 2 gateways).
stack: $(STAMP) vendor
	scripts/stack.sh

run: $(STAMP) vendor
	$(BIN)/hq-gateway serve --config config/gateway.toml

NODE_STAMP := tests/node/node_modules/.installed

# Node STOMP clients for tests/integration/test_node_clients.py, exactly as locked.
$(NODE_STAMP): tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

# Browser bundles of @stomp/stompjs and sockjs-client for the live console's STOMP mode (/console), copied from
# console/node_modules as locked in console/package-lock.json: no CDN, nothing minified committed.
CONSOLE_STAMP := console/node_modules/.installed
VENDOR_DIR := gateway/static/vendor

$(CONSOLE_STAMP): console/package-lock.json
	cd console && npm ci --no-audit --no-fund --silent
	touch $(CONSOLE_STAMP)

$(VENDOR_DIR)/stomp.umd.min.js: $(CONSOLE_STAMP)
	mkdir -p $(@D) && cp console/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js $@
	cp console/node_modules/@stomp/stompjs/LICENSE $(@D)/stompjs.LICENSE

$(VENDOR_DIR)/sockjs.min.js: $(CONSOLE_STAMP)
	mkdir -p $(@D) && cp console/node_modules/sockjs-client/dist/sockjs.min.js $@
	cp console/node_modules/sockjs-client/LICENSE $(@D)/sockjs-client.LICENSE

.PHONY: vendor chromium
vendor: $(VENDOR_DIR)/stomp.umd.min.js $(VENDOR_DIR)/sockjs.min.js

# Debian's headless Chromium for tests/integration/test_console_browser.py (skips without it; fails under CI).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null) || echo "chromium not installed (needs root)"

# RabbitMQ's STOMP plugins for tests/integration/test_bridge_rabbitmq.py, when RabbitMQ is installed here.
rabbitmq-stomp:
	@if command -v rabbitmq-plugins >/dev/null 2>&1; then rabbitmq-plugins enable rabbitmq_stomp rabbitmq_web_stomp >/dev/null 2>&1 || true; fi

# Lint first: CI fails on lint errors (ruff and mypy are pinned in the dev extra).
# Then the integration suite once more with the server hooks off (plain ASGI, uvicorn's stock protocols):
# the fallback stays correct. Left out: tests that run uvicorn in-process and choose their protocols.
HOOKS_OFF_SKIP := $(addprefix --ignore=tests/integration/,test_server_hooks.py test_connection_layer.py test_sockjs_http.py)

test: lint $(NODE_STAMP) rabbitmq-stomp vendor chromium
	$(BIN)/python -m pytest -q
	GATEWAY_SERVER_HOOKS=off $(BIN)/python -m pytest -q tests/integration $(HOOKS_OFF_SKIP)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests benchmarks
	$(BIN)/ruff format --check gateway tests benchmarks
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format gateway tests benchmarks
	$(BIN)/ruff check --fix gateway tests benchmarks

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[bench]'
	touch $(BENCH_STAMP)

# BENCH_ARGS=--quick (a few minutes) | --full (10,000 idle viewers, 15+ minutes) | --no-profile (skip py-spy)
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Memory journal: bytes kept per envelope (tracemalloc) and gateway RSS across rounds of expiring conversations.
bench-journal: $(STAMP)
	$(BIN)/python -m benchmarks.journal_memory

# Issue 14's soak: redis-server + 2 gateways + >= 2,000 viewers under faults, every viewer checked event by event.
# Never part of make test. SOAK_ARGS=--quick (300 viewers, ~3 minutes) | --phases lease-kill,hq-drops
soak: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.soak.run $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .venv-lock .venv-latest build *.egg-info
