#!/usr/bin/env bash
# Tern against nginx and HAProxy on the shared harness (interleaved rounds, one core each).
# Extra arguments go to proxy-bench.sh, e.g. --rounds 5 --connections 256 --json out.json
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null || {
  apt-get update -qq && apt-get install -y -qq wrk nginx haproxy curl >/dev/null
}
cargo build --release --bin tern
harness=${PROXY_BENCH:-../shared/bench/proxy-bench.sh}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
exec "$harness" --candidate-name tern --candidate-port "$port" \
  --candidate-cmd "exec $PWD/bench/tern-candidate.sh $PWD/target/release/tern" "$@"
