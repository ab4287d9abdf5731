#!/usr/bin/env bash
# Memory footprint per request, in numbers that do not depend on machine load: cache misses per
# forwarded request under valgrind's cache simulator (cachegrind), with many keep-alive
# connections served in turn, so that each request finds its connection's state as cold as it
# is at that concurrency.
#   - D1: a 32 KB, 8-way first-level data cache; LL: a 512 KB, 8-way last level (one core's L2
#     on the bench machines; the shared L3 is not modelled).
#   - Each run opens C connections and sends 2*C warm-up requests; a second run sends N more.
#     The difference divided by N is the steady-state cost of one request.
# Usage: bench/cache.sh [--requests N] [--conns C]... [--bin PATH]... [--nginx]
# Default: tern from a release build, 20000 requests, at 8 and 256 connections. --nginx adds
# nginx as a reverse proxy (one process, upstream keep-alive) as the anchor.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=20000
conns=()
bins=()
nginx=
while (($#)); do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --conns) conns+=("$2"); shift 2 ;;
    --bin) bins+=("$(realpath "$2")"); shift 2 ;;
    --nginx) nginx=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
((${#conns[@]})) || conns=(8 256)
for c in valgrind nginx curl python3; do
  command -v $c >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind nginx curl >/dev/null; break; }
done
if ! ((${#bins[@]})); then
  cargo build --release --bin tern >&2
  bins=("$PWD/target/release/tern")
fi
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n ${KEEP:-} ]] || rm -rf "$tmp"; }
trap cleanup EXIT
# shellcheck source=bench/backend.sh
. bench/backend.sh
start_backend

# Starts the proxy named $1 under cachegrind in $2 (a fresh dir); sets lport and vp. Not in a
# subshell: measure waits for it.
start() { # $1 = tern binary or "nginx", $2 = dir
  local what=$1 dir=$2 aport cg
  lport=$(port); aport=$(port)
  # TOOL=callgrind: the same simulation with callers (callgrind_annotate --tree=caller).
  local tool=${TOOL:-cachegrind}
  cg=(taskset -c 0 valgrind --tool="$tool" --cache-sim=yes --D1=32768,8,64 --I1=32768,8,64
      --LL=524288,8,64 --"$tool"-out-file="$dir/cg.out")
  if [[ $what == nginx ]]; then
    cat > "$dir/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $dir/pid; error_log $dir/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_timeout 75s; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$bport; keepalive 1024; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$lport backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$aport; location / { return 200; } } }
EOF
    "${cg[@]}" nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/vg.log" &
  else
    bench/tern-config.sh "$lport" "$aport" "127.0.0.1:$bport" > "$dir/tern.yaml"
    # One malloc arena, as tern would set by re-executing itself (which valgrind would not follow).
    GLIBC_TUNABLES=glibc.malloc.arena_max=1 "${cg[@]}" "$what" --config "$dir" --log-level warn \
      --worker-threads 1 2>"$dir/vg.log" &
  fi
  vp=$!
  pids+=($vp)
  local ready=ready
  [[ $what != nginx ]] || ready=
  wait_http "http://127.0.0.1:$aport/$ready" >&2
}
# Runs one measurement; prints the run's totals: instructions, data references, and I1, D1, LLi
# and LLd misses (the summary valgrind prints at exit).
measure() { # $1 = what, $2 = connections, $3 = requests after the warm-up, $4 = dir
  mkdir -p "$4"
  local lport vp
  start "$1" "$4" >&2
  round_robin "$2" "$3" "$lport" >&2
  kill -TERM "$vp"; wait "$vp" || true
  python3 - "$4/vg.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def total(label):
    m = re.search(r"==\d+== " + label.replace(" ", r"\s+") + r":\s+([\d,]+)", text)
    if not m: sys.exit(f"no '{label}' in {sys.argv[1]}")
    return int(m.group(1).replace(",", ""))
print(total("I refs"), total("D refs"), total("I1 misses"), total("D1 misses"), total("LLi misses"), total("LLd misses"))
PY
}
printf '%-10s %6s %9s %9s %9s %9s %9s %9s\n' proxy conns instr data I1miss D1miss LLimiss LLdmiss
whats=("${bins[@]}")
[[ -z $nginx ]] || whats+=(nginx)
for what in "${whats[@]}"; do
  for c in "${conns[@]}"; do
    dir=$tmp/${what##*/}-$c
    base=$(measure "$what" "$c" 0 "$dir-base")
    full=$(measure "$what" "$c" "$requests" "$dir-full")
    python3 - "$what" "$c" "$requests" "$base" "$full" <<'PY'
import sys
what, c, n = sys.argv[1].rsplit("/", 1)[-1], int(sys.argv[2]), int(sys.argv[3])
b, f = map(int, sys.argv[4].split()), map(int, sys.argv[5].split())
per = [(y - x) / n for x, y in zip(b, f)]
print(f"{what:<10} {c:>6} " + " ".join(f"{v:>9.1f}" for v in per))
PY
  done
done
