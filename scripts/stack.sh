#!/usr/bin/env bash
# `make stack`: the docker-compose.yml topology without Docker — a local redis-server, RabbitMQ with
# its STOMP plugins (the machine's own broker), the HQ simulator and two gateway replicas sharing the
# Redis. Ctrl+C stops exactly the processes this script started (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=${STACK_DIR:-.stack}
REDIS_PORT=${STACK_REDIS_PORT:-6390}
SIM_PORT=${STACK_SIM_PORT:-8090}
GW_PORTS=(${STACK_GATEWAY_PORTS:-8080 8081})
mkdir -p "$RUN"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN" --appendonly yes --appendfsync everysec \
  --save "" >"$RUN/redis.log" 2>&1 &
pids+=($!)

bridge_url=""
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  rabbitmq-plugins enable rabbitmq_stomp rabbitmq_web_stomp >/dev/null 2>&1 || true
  bridge_url="stomp://guest:guest@127.0.0.1:61613/"
else
  echo "stack: RabbitMQ not installed here: running without the bridge" >&2
fi

"$BIN/hq-gateway" simulate --port "$SIM_PORT" --no-access-log >"$RUN/simulator.log" 2>&1 &
pids+=($!)

for port in "${GW_PORTS[@]}"; do
  GATEWAY_PORT=$port GATEWAY_HQ_BASE_URL="http://127.0.0.1:$SIM_PORT" GATEWAY_HQ_TOKEN=hq_pat_simulator \
  GATEWAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" GATEWAY_BRIDGE_URL="$bridge_url" \
    "$BIN/hq-gateway" serve >"$RUN/gateway-$port.log" 2>&1 &
  pids+=($!)
done

for port in "${GW_PORTS[@]}"; do
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
echo "stack up: gateways ${GW_PORTS[*]/#/http://127.0.0.1:} (console at /console), simulator :$SIM_PORT,"
echo "          redis :$REDIS_PORT${bridge_url:+, bridge -> RabbitMQ :61613}; logs in $RUN/. Ctrl+C stops it all."
wait -n "${pids[@]}"
echo "stack: a process exited; stopping the rest (see $RUN/*.log)" >&2
