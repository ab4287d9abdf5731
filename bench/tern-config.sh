#!/usr/bin/env bash
# The one-route bench config: a listener forwarding everything to one backend.
# Usage: tern-config.sh LISTEN_PORT ADMIN_PORT BACKEND_ADDR > tern.yaml
# TERN_BENCH_LISTENER_EXTRA / TERN_BENCH_ROUTE_EXTRA add listener / route fields, e.g.
# ", request_headers_timeout: 0s" (to measure what a feature costs); TERN_BENCH_VHOST_EXTRA adds
# lines to the virtual host (block style, each starting with a newline and 8 spaces), e.g.
# header rules: see bench/README.md.
set -euo pipefail
cat <<YAML
admin: { address: "127.0.0.1:$2" }
listeners:
  - { name: bench, address: "127.0.0.1:$1", route_config: main${TERN_BENCH_LISTENER_EXTRA:-} }
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]${TERN_BENCH_VHOST_EXTRA:-}
        routes:
          - match: { prefix: / }
            route: { cluster: backend${TERN_BENCH_ROUTE_EXTRA:-} }
clusters:
  - name: backend
    endpoints: [{ address: "$3" }]
YAML
