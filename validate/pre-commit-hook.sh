#!/usr/bin/env bash
# pre-commit entry point: builds tern-validate from this checkout (cargo skips the build when it
# is up to date) and runs it with the hook's args in the user's repository.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$#" -eq 0 ]; then
  echo "tern-validate hook: set args to the configuration directory, e.g. args: [config/]" >&2
  exit 2
fi
cargo build --release --quiet --locked -p tern-validate --manifest-path "$repo/Cargo.toml" >&2
exec "$repo/target/release/tern-validate" "$@"
