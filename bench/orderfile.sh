#!/usr/bin/env bash
# Writes link/tern.order, the order in which the release link lays out tern's functions (build.rs
# hands it to the linker): every function the proxy runs, hottest first, then nothing else.
#
# Why: the kernel maps a binary's code into a process 64 KB at a time (fault-around), and
# without an order the few hundred KB of code the proxy runs are spread over most of its 11 MB
# of .text, so idle RSS is nearly the whole .text. Ordered, that code sits together: idle RSS
# falls by megabytes, and the request path shares fewer pages and cache sets.
#
# The functions come from three callgrind runs of a release build, each dumped once idle, and
# each adds the functions not named yet, the most instructions first:
#   1. bench/profile.sh's config, under N keep-alive requests through to the nginx backend
#      (the request path);
#   2. the same behind a TLS listener: 20 handshakes, 200 requests (rustls, ring);
#   3. the bundled quickstart as a user starts it: 100 requests, the admin endpoint's pages
#      (start-up, info logs, a worker per core).
# Names are the linker's (mangled), so the file matches builds of the same source, toolchain
# and Cargo.lock; a function it does not name is laid out after the named ones, as before.
# tests/link_order.rs fails when Cargo.lock or the Dockerfile's toolchain is not the one the
# header names: run this again after a toolchain or dependency update.
#
# Usage: bench/orderfile.sh [--requests N]     (about 3 min after the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=2000
while (($#)); do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
for c in valgrind nginx curl python3 openssl; do
  command -v $c >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind nginx curl python3 openssl >/dev/null; break; }
done
# The release image's toolchain (the Dockerfile's RUST_VERSION): the names are that rustc's.
want=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
have=$(rustc --version | cut -d' ' -f2)
[[ $have == "$want" ]] || { echo "rustc is $have, the Dockerfile builds with $want: run with that one" >&2; exit 1; }
cargo build --release --bin tern >&2
bin=$PWD/target/release/tern
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
# shellcheck source=bench/backend.sh
. bench/backend.sh
start_backend

# Runs tern on config DIR $1 under callgrind until idle after `$2` (a command given the proxy
# and admin ports), then dumps and stops it. tern re-executes itself to set the tunable.
trace() { # $1 = config dir, $2 = load command, $3 = listen port, $4 = admin port, $5 = output;
  # the rest: tern's own flags
  local dir=$1 load=$2 lp=$3 ap=$4 out=$5; shift 5
  GLIBC_TUNABLES=glibc.malloc.arena_max=1 valgrind --tool=callgrind --demangle=no \
    --callgrind-out-file="$out" "$bin" --config "$dir" "$@" >"$out.log" 2>&1 &
  local vp=$!
  pids+=($vp)
  wait_http "http://127.0.0.1:$ap/ready"
  "$load" "$lp" "$ap"
  callgrind_control -d $vp >/dev/null
  # The dump is written as <output>.1 once the process next runs.
  for _ in $(seq 600); do [[ -s $out.1 ]] && break; sleep 0.1; done
  [[ -s $out.1 ]] || { echo "no callgrind dump at $out.1" >&2; exit 1; }
  kill -TERM $vp; wait $vp || true
}
bench_load() { round_robin 8 "$requests" "$1"; }
tls_load() {
  python3 - "$1" <<'PY'
import http.client, ssl, sys
port = int(sys.argv[1])
ctx = ssl._create_unverified_context()
for i in range(20):  # full handshakes, then requests on one connection
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    for _ in range(1 if i < 19 else 200):
        c.request("GET", "/")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
    c.close()
PY
}
quickstart_load() {
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/healthz"; done
  for page in ready stats stats/prometheus config_dump clusters; do
    curl -fs -o /dev/null "http://127.0.0.1:$2/$page"
  done
}
lport=$(port); aport=$(port)
mkdir -p "$tmp/bench"
bench/tern-config.sh "$lport" "$aport" "127.0.0.1:$bport" > "$tmp/bench/tern.yaml"
# As the benches run it: one worker, warnings only.
trace "$tmp/bench" bench_load "$lport" "$aport" "$tmp/bench.out" --log-level warn --worker-threads 1
# A TLS listener (ECDSA P-256, as bench/tls.py), as the benches run it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
lport=$(port); aport=$(port)
mkdir -p "$tmp/tls"
TERN_BENCH_LISTENER_EXTRA=", tls: { certificates: [{ certificate_chain: { file: $tmp/cert.pem }, private_key: { file: $tmp/key.pem } }] }" \
  bench/tern-config.sh "$lport" "$aport" "127.0.0.1:$bport" > "$tmp/tls/tern.yaml"
trace "$tmp/tls" tls_load "$lport" "$aport" "$tmp/tls.out" --log-level warn --worker-threads 1
# As a user runs it: its own ports (10000 and 9901), info logs, a worker per core.
trace config-examples/quickstart quickstart_load 10000 9901 "$tmp/quickstart.out"

mkdir -p link
{
  echo "# tern's function order for the release link (build.rs); written by bench/orderfile.sh."
  echo "# Made with these two; tests/link_order.rs fails when the Dockerfile's or Cargo.lock differs:"
  echo "# rustc $(rustc --version | cut -d' ' -f2-)"
  echo "# Cargo.lock sha256 $(tr -d '\r' < Cargo.lock | sha256sum | cut -d' ' -f1)"
} > "$tmp/order"
python3 - "$bin" "$tmp/bench.out.1" "$tmp/tls.out.1" "$tmp/quickstart.out.1" >> "$tmp/order" <<'PY'
import collections, re, sys
binary, runs = sys.argv[1], sys.argv[2:]
seen = []
for path in runs:
    ir = collections.Counter()
    obs, fns, ob, fn = {}, {}, None, None
    skip = False  # the line after calls= is the call's inclusive cost, not this function's own
    for line in open(path):
        # Objects and functions are numbered apart (and files apart again: fl= fi= fe= cfi= cfl=,
        # not needed here); "(id) name" defines an id, "(id)" uses it.
        if line.startswith(("ob=", "cob=", "fn=", "cfn=")):
            key, rest = line.split("=", 1)
            m = re.match(r"\((\d+)\)(?: (.*))?", rest.strip())
            table = obs if key in ("ob", "cob") else fns
            if m.group(2):
                table[m.group(1)] = m.group(2)
            if key == "ob":
                ob = obs[m.group(1)]
            elif key == "fn":
                fn = fns.get(m.group(1))
                # callgrind names a recursion level as name'2
                fn = fn and re.sub(r"'\d+$", "", fn)
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if not skip and ob == binary and fn and not fn.startswith(("0x", "(")):
                ir[fn] += int(line.split()[-1])
            skip = False
    seen.append(ir)
order, named = [], set()
for ir in seen:
    for fn, _ in ir.most_common():
        if fn not in named:
            named.add(fn)
            order.append(fn)
print("\n".join(order))
PY
mv "$tmp/order" link/tern.order
echo "link/tern.order: $(grep -vc '^#' link/tern.order) functions (request path first, then TLS, then start-up)" >&2
