#!/usr/bin/env bash
# Times a release build of tern-validate on a generated configuration (default: 1,000 files with
# 10,000 routes and 1,000 clusters); prints wall time and peak RSS (from /usr/bin/time -v).
#
# Usage: bench/validate-bench.sh [FILES] [ROUTES_PER_FILE] [RUNS] [one-file]
#   bench/validate-bench.sh 1000 100          100,000 routes in 1,000 files (target: under 2 s)
#   bench/validate-bench.sh 1000 100 5 one-file   the same in one file (the YAML node budget)
#   bench/validate-bench.sh hostile           the inputs that used to be quadratic
#                                             (bench/validate-hostile-gen.py; results in validate-results.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ ${1:-} == hostile ]]; then
  cargo build --release -p tern-validate --manifest-path "$root/Cargo.toml" >&2
  bin="$root/target/release/tern-validate"
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  python3 "$root/bench/validate-hostile-gen.py" "$dir"
  for case in bad-clusters bad-flow long-prefix matchers; do
    /usr/bin/time -v "$bin" "$dir/$case" > /dev/null 2> "$dir/time.txt" || true
    wall=$(grep 'Elapsed (wall clock)' "$dir/time.txt" | awk '{print $NF}')
    rss=$(grep 'Maximum resident set size' "$dir/time.txt" | awk '{print $NF}')
    echo "$case: wall ${wall} (m:ss), peak RSS ${rss} KiB"
  done
  exit 0
fi
files=${1:-1000}
per_file=${2:-10}
runs=${3:-5}
layout=${4:-split}
cargo build --release -p tern-validate --manifest-path "$root/Cargo.toml" >&2
bin="$root/target/release/tern-validate"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 "$root/bench/validate-gen.py" "$dir/config" "$files" "$per_file" "$layout"
routes=$(grep -rhE -- '^          - (match|name: r)' "$dir/config" | wc -l)
clusters=$(grep -rhE -- '^  - name: svc-' "$dir/config" | wc -l)
echo "config: $(find "$dir/config" -name '*.yaml' | wc -l) files, $routes routes, $clusters clusters, $(du -sh "$dir/config" | cut -f1)"
"$bin" --format json "$dir/config" > "$dir/out.json" || { echo "generated config is not valid:"; head -40 "$dir/out.json"; exit 1; }
for i in $(seq "$runs"); do
  /usr/bin/time -v "$bin" "$dir/config" > /dev/null 2> "$dir/time.txt"
  wall=$(grep 'Elapsed (wall clock)' "$dir/time.txt" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$dir/time.txt" | awk '{print $NF}')
  user=$(grep 'User time' "$dir/time.txt" | awk '{print $NF}')
  sys=$(grep 'System time' "$dir/time.txt" | awk '{print $NF}')
  echo "run $i: wall ${wall} (m:ss), user ${user}s, sys ${sys}s, peak RSS ${rss} KiB"
done
