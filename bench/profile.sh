#!/usr/bin/env bash
# Cost of one forwarded request, in numbers that do not depend on machine load:
#   - user-space instructions per request (valgrind callgrind: a run with N requests minus a run
#     with none, so start-up and shutdown cancel out),
#   - system calls per request (strace -c over a wrk run).
# Usage: bench/profile.sh [--requests N] [--bin PATH] [--keep DIR] [--env VAR=VALUE]...
#                         [--floor [--headermap | --block]]
# Same one-route config and nginx backend as bench/proxy.sh. With --keep, the callgrind output
# stays in DIR for callgrind_annotate. --floor measures bench/h1_floor.rs instead of tern (the
# least a tokio + httparse proxy does per request; --headermap adds the http crate's types,
# --block forwards header blocks with a proxy's usual edits instead).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=20000
keep=
bin=
floor=
floor_args=()
# tern re-executes itself once to set this (one malloc arena) unless it is set: under valgrind
# the re-executed process would run unmeasured, so set it here, as the proxy would.
envs=(GLIBC_TUNABLES=glibc.malloc.arena_max=1)
while (($#)); do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --bin) bin=$(realpath "$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --floor) floor=1; shift ;;
    --headermap | --block) floor_args+=("$1"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
for c in valgrind strace nginx curl python3; do
  command -v $c >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind strace nginx curl >/dev/null; break; }
done
if [[ -n $floor ]]; then
  cargo build --release --example h1-floor >&2
  bin=$PWD/target/release/examples/h1-floor
elif [[ -z $bin ]]; then
  cargo build --release --bin tern >&2
  bin=$PWD/target/release/tern
fi
# Starts the proxy under test (tern on its config DIR, or the floor on its arguments). Call it
# only in the background: it execs, so `$!` is the proxy's (or its wrapper's) own pid.
launch() { # $1 = listen port, $2 = admin port, $3 = config dir; the rest = wrapper command
  local lp=$1 ap=$2 dir=$3; shift 3
  if [[ -n $floor ]]; then
    exec env "${envs[@]}" "$@" "$bin" "127.0.0.1:$lp" "127.0.0.1:$ap" "127.0.0.1:$bport" "${floor_args[@]}"
  else
    exec env "${envs[@]}" "$@" "$bin" --config "$dir" --log-level warn --worker-threads 1
  fi
}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n $keep ]] || rm -rf "$tmp"; }
trap cleanup EXIT
# shellcheck source=bench/backend.sh
. bench/backend.sh
start_backend

# One run of tern under $wrap, $1 requests sent over 8 keep-alive connections by a Python client
# (fixed count, so runs differ only in the number of requests).
client() {
  python3 - "$1" "$2" <<'PY'
import http.client, sys, threading
n, port = int(sys.argv[1]), int(sys.argv[2])
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(k):
        c.request("GET", "/")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
ts = [threading.Thread(target=run, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
}
run_tern() { # $1 = requests, $2 = tag; prints total instructions
  local n=$1 tag=$2 lport aport
  lport=$(port); aport=$(port)
  mkdir -p "$tmp/$tag"
  bench/tern-config.sh "$lport" "$aport" "127.0.0.1:$bport" > "$tmp/$tag/tern.yaml"
  launch "$lport" "$aport" "$tmp/$tag" taskset -c 0 valgrind --tool=callgrind \
    --callgrind-out-file="$tmp/$tag/callgrind.out" 2>"$tmp/$tag/valgrind.log" &
  local vp=$!
  wait_http "http://127.0.0.1:$aport/ready"
  ((n == 0)) || client "$n" "$lport"
  kill -TERM $vp; wait $vp || true
  grep -m1 -o 'Collected : [0-9]*' "$tmp/$tag/valgrind.log" | grep -o '[0-9]*'
}
base=$(run_tern 0 idle)
full=$(run_tern "$requests" load)
echo "callgrind: $(( (full - base) / requests )) user-space instructions per request ($requests requests; idle run $base, loaded $full)"

# System calls per request: strace -c -f over a client run against a plain (not valgrind) tern.
lport=$(port); aport=$(port)
mkdir -p "$tmp/strace"
bench/tern-config.sh "$lport" "$aport" "127.0.0.1:$bport" > "$tmp/strace/tern.yaml"
launch "$lport" "$aport" "$tmp/strace" & tp=$!
pids+=($tp)
wait_http "http://127.0.0.1:$aport/ready"
strace -c -f -p $tp -o "$tmp/strace/summary" & sp=$!
sleep 0.5
client "$requests" "$lport"
kill -INT $sp; wait $sp || true
calls=$(awk '$NF=="total"{print $4}' "$tmp/strace/summary")
echo "strace: $(python3 -c "print(round($calls/$requests, 2))") system calls per request ($calls in all)"
grep -E '^ *[0-9]' "$tmp/strace/summary" | sort -k4 -n -r | head -8 | awk '{printf "  %-14s %s\n", $NF, $4}'
[[ -z $keep ]] || { mkdir -p "$keep"; cp "$tmp/load/callgrind.out" "$keep/"; echo "callgrind output: $keep/callgrind.out"; }
