#!/usr/bin/env bash
# Measures tern-sync against moto's S3 server on this machine:
#  - propagation: time from `tern-sync publish` returning to `tern` serving the new body,
#    over N changes (default 20) at each interval given (default "1s 5s"), p50/p95;
#  - idle S3 requests: counted from the agent's /metrics over IDLE seconds, extrapolated to an hour;
#  - agent memory: VmRSS and VmHWM from /proc.
# Usage: [MODE=plain] bench/sync-propagation.sh [N] [IDLE_SECONDS] [INTERVALS...]
# MODE=plain uploads the files one by one (as `aws s3 sync` does) instead of `tern-sync publish`.
# Needs: python3 with moto[server] and boto3, curl. Uses target/${PROFILE:-debug}/{tern,tern-sync}.
set -euo pipefail
N=${1:-20}
IDLE=${2:-60}
shift 2 2>/dev/null || true
INTERVALS=${*:-1s 5s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${PROFILE:-debug}
flag=""; [ "$PROFILE" = release ] && flag="--release"
cargo build -q $flag --manifest-path "$ROOT/Cargo.toml" --bin tern
cargo build -q $flag --manifest-path "$ROOT/Cargo.toml" -p tern-sync
SYNC="$ROOT/target/$PROFILE/tern-sync"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, deadline seconds
  local end=$((SECONDS + ${2:-30}))
  until curl -sf -o /dev/null "$1"; do [ $SECONDS -lt $end ] || { echo "timeout: $1" >&2; exit 1; }; sleep 0.05; done
}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# A private copy: a broad `pkill tern` elsewhere on a shared machine must not end the measurement.
TERN="$WORK/proxy-under-test"
cp "$ROOT/target/$PROFILE/tern" "$TERN"

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
MOTO_PORT=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$MOTO_PORT" TERN_SYNC_FORCE_PATH_STYLE=true
wait_http "$AWS_ENDPOINT_URL_S3/moto-api/"
python3 -c "import boto3; boto3.client('s3').create_bucket(Bucket='bench')"

write_config() { # dir listen admin body
  mkdir -p "$1/routes"
  printf 'admin:\n  address: 127.0.0.1:%s\n' "$3" >"$1/admin.yaml"
  printf 'listeners:\n  - name: ingress\n    address: 127.0.0.1:%s\n    route_config: main\n' "$2" >"$1/listeners.yaml"
  printf 'route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: ["*"]\n        routes:\n          - match: { path: /hello }\n            direct_response: { status: 200, body: "%s" }\n' "$4" >"$1/routes/main.yaml"
}
now_ms() { date +%s%3N; }
MODE=${MODE:-manifest}
push() { # src prefix
  if [ "$MODE" = plain ]; then
    python3 - "$1" "$2" <<'PY'
import boto3, os, sys
s3 = boto3.client("s3")
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        p = os.path.join(d, f)
        s3.upload_file(p, "bench", sys.argv[2] + "/" + os.path.relpath(p, sys.argv[1]))
PY
  else
    "$SYNC" publish --bucket bench --prefix "$2" "$1" >/dev/null
  fi
}

for INTERVAL in $INTERVALS; do
  PREFIX="$MODE-$INTERVAL"
  LISTEN=$(free_port); ADMIN=$(free_port); HEALTH=$(free_port)
  SRC="$WORK/src-$INTERVAL"; DEST="$WORK/dest-$INTERVAL"
  write_config "$SRC" "$LISTEN" "$ADMIN" start
  push "$SRC" "$PREFIX"
  "$SYNC" run --bucket bench --prefix "$PREFIX" --dest "$DEST" --interval "$INTERVAL" \
    --health-address "127.0.0.1:$HEALTH" 2>"$WORK/agent-$INTERVAL.log" &
  AGENT=$!; PIDS+=($AGENT)
  until [ -L "$DEST/current" ]; do sleep 0.05; done
  "$TERN" --config "$DEST/current" 2>"$WORK/tern-$INTERVAL.log" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$ADMIN/ready"
  secs=$(python3 -c "import re,sys; s='$INTERVAL'; print(float(s[:-2])/1000 if s.endswith('ms') else float(s[:-1]))")
  : >"$WORK/lat-$INTERVAL"
  for i in $(seq 1 "$N"); do
    # Publish at a random phase of the poll cycle, as real changes are.
    sleep "$(python3 -c "import random; print(round(random.uniform(0, $secs), 3))")"
    write_config "$SRC" "$LISTEN" "$ADMIN" "change-$i"
    push "$SRC" "$PREFIX"
    t0=$(now_ms)
    until [ "$(curl -s "http://127.0.0.1:$LISTEN/hello")" = "change-$i" ]; do sleep 0.01; done
    echo $(( $(now_ms) - t0 )) >>"$WORK/lat-$INTERVAL"
  done
  python3 - "$WORK/lat-$INTERVAL" "$INTERVAL" "$MODE" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]))
pct = lambda p: v[min(len(v) - 1, max(0, round(p / 100 * len(v) + 0.5) - 1))]
print(f"{sys.argv[3]} mode, interval {sys.argv[2]}: {len(v)} changes, propagation p50 {pct(50)} ms, p95 {pct(95)} ms, max {v[-1]} ms")
PY
  m() { curl -s "http://127.0.0.1:$HEALTH/metrics" | awk -v k="$1" '$1==k {print $2}'; }
  g0=$(m 'tern_sync_s3_requests_total{op="GetObject"}'); l0=$(m 'tern_sync_s3_requests_total{op="ListObjectsV2"}')
  b0=$(m tern_sync_bytes_downloaded_total); t0=$(now_ms)
  sleep "$IDLE"
  g1=$(m 'tern_sync_s3_requests_total{op="GetObject"}'); l1=$(m 'tern_sync_s3_requests_total{op="ListObjectsV2"}')
  b1=$(m tern_sync_bytes_downloaded_total); t1=$(now_ms)
  python3 -c "
g=$g1-$g0; l=$l1-$l0; s=($t1-$t0)/1000
print(f'interval $INTERVAL: idle {s:.1f} s: {g:.0f} GETs, {l:.0f} LISTs, {$b1-$b0:.0f} bytes downloaded -> {(g+l)*3600/s:.0f} S3 requests per idle hour')"
  grep -E 'VmRSS|VmHWM' "/proc/$AGENT/status" | tr -s ' \t' ' ' | sed "s/^/interval $INTERVAL: agent /"
done
