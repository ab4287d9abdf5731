# Sourced by bench/profile.sh and bench/cache.sh: free ports, waiting for an HTTP answer, and
# the nginx backend both measure against (fixed 200, 100-byte body, keep-alive). Needs `tmp`
# (a scratch dir) and `pids` (processes to stop) from the caller.
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
