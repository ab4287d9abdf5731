# Sourced by bench/profile.sh, bench/cache.sh and bench/orderfile.sh: free ports, waiting for an
# HTTP answer, the nginx backend they measure against (fixed 200, 100-byte body, keep-alive), and
# a round-robin keep-alive client. Needs `tmp` (a scratch dir) and `pids` (processes to stop)
# from the caller.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

# Starts the backend in $tmp/backend and sets `bport`.
start_backend() {
  bport=$(port)
  local body="proxy-bench backend OK. This is a fixed one-hundred-byte response body used for proxy benchmarking."
  mkdir -p "$tmp/backend"
  cat > "$tmp/backend/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $tmp/backend/pid; error_log $tmp/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$bport; location / { default_type text/plain; return 200 "$body"; } } }
NGINX
  nginx -p "$tmp/backend" -c "$tmp/backend/nginx.conf" & pids+=($!)
  wait_http "http://127.0.0.1:$bport/"
}

# C keep-alive connections, each used twice, then N requests round-robin over them, one at a
# time (bench/cache.sh, bench/orderfile.sh).
round_robin() { # $1 = connections, $2 = requests after the warm-up, $3 = port
  python3 - "$@" <<'PY'
import http.client, sys
c, n, port = map(int, sys.argv[1:])
conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(c)]
for i in range(2 * c + n):
    k = conns[i % c]
    k.request("GET", "/")
    r = k.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
