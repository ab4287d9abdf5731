#!/usr/bin/env bash
# What recording stats costs: bench/proxy.sh runs alternately with stats on and with
# TERN_STATS_DISABLED=1 (counters and histograms off), and compares Tern's rps against the best
# anchor of the same run (which cancels most of the machine's drift) and its CPU per request.
# Usage: bench/stats-cost.sh [--pairs 2] [proxy-bench options, e.g. --rounds 2 --duration 5]
# STATS_COST_DIR=DIR re-analyses the results of an earlier run without measuring again.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=2
if [[ ${1:-} == --pairs ]]; then pairs=$2; shift 2; fi
out=${STATS_COST_DIR:-}
if [[ -n $out ]]; then skip=1; else skip=0; out=$(mktemp -d); fi
for ((p = 1; p <= pairs && !skip; p++)); do
  for mode in on off; do
    if [[ $mode == off ]]; then export TERN_STATS_DISABLED=1; else unset TERN_STATS_DISABLED; fi
    bench/proxy.sh --json "$out/$mode-$p.json" "$@" >"$out/$mode-$p.txt" 2>&1 \
      || { cat "$out/$mode-$p.txt"; exit 1; }
  done
done
unset TERN_STATS_DISABLED
python3 - "$out" "$pairs" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def load(mode):
    rows = []
    for p in range(1, pairs + 1):
        j = json.load(open(f"{out}/{mode}-{p}.json"))
        t = next(t for t in j["targets"] if t["kind"] == "candidate")
        a = next(t for t in j["targets"] if t["name"] == j["best_anchor"])
        rows.append((t["ratio_vs_best_anchor"], t["median_rps"], t["median_cpu_us_per_req"],
                     t["median_cpu_us_per_req"] / a["median_cpu_us_per_req"]))
    return rows
on, off = load("on"), load("off")
print("run  stats  tern/best-anchor  tern rps  µs CPU/req  CPU/anchor CPU")
for i in range(pairs):
    for name, rows in (("on", on), ("off", off)):
        r = rows[i]
        print(f"{i+1:>3}  {name:>5}  {r[0]:>16.3f}  {r[1]:>8.0f}  {r[2]:>10.1f}  {r[3]:>14.3f}")
m = lambda rows, k: statistics.median(r[k] for r in rows)
ratio = m(on, 0) / m(off, 0)
cpu = m(on, 2) / m(off, 2)
ncpu = m(on, 3) / m(off, 3)
print(f"stats on / off, anchor-normalised rps: {ratio:.3f} (cost {100*(1-ratio):.1f} %)")
print(f"stats on / off, CPU per request:       {cpu:.3f} (cost {100*(cpu-1):.1f} %)")
print(f"stats on / off, CPU/req over anchor's:  {ncpu:.3f} (cost {100*(ncpu-1):.1f} %)")
PY
echo "raw results: $out"
