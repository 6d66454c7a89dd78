#!/usr/bin/env python3
"""Benchmark harness: Portico side by side with nginx and HAProxy.

All traffic stays on 127.0.0.1. Each proxy is pinned to the same single
core (core 0); the backend and the load generator share the other core.
Rounds interleave the targets (A, B, C, D, A, B, C, D, ...) so machine
drift hits all of them alike; the table shows medians over rounds, and
ratios computed per round, then their median.

Because the client side can saturate before the proxy does on 2 cores,
each proxy's CPU time is read from /proc during every run and
"requests per proxy CPU-second" is reported next to requests/s.

    bench.py [--quick] [--rounds N] [--duration S] [--portico PATH] [--out FILE]

`run.sh` installs the tools from apt and builds Portico first.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

PROXY_CORE = "0"
CLIENT_CORE = "1"
# The multi-core scenario: proxies (2 workers) and the client on both.
MULTI_CORES = "0,1"
# The fixed-rate scenario's rate, as a share of nginx's maximum.
FIXED_RATE = 0.7
# The fixed-rate scenario runs in short slices, interleaved across the
# targets (the order rotated every slice): a p99 is the tail of the
# run, and on a shared VM one stall of the host decides a long run's
# tail, so one run per target cannot compare two proxies. Each slice's
# targets run back to back, and the ratios pair them slice by slice.
FIXED_SLICES = 5
FIXED_SLICE_S = 2
# Bare Pingora saturates below that rate (its maximum is about 0.6x
# nginx's): its figures would be queueing, and the backlog it leaves
# slows the next slice. Not run there.
FIXED_TARGETS = ["portico", "portico-default", "nginx", "haproxy", "direct"]
# Slices per round of the plugin scenario (of FIXED_SLICE_S each).
PLUGIN_SLICES = 6
# Seconds a proxy idles before its idle RSS is read (memory scenario):
# Portico trims start-up memory 3 s after it serves.
MEMORY_IDLE_S = 8

# Ports (127.0.0.1 only).
BACKEND_HTTP = 19080
BACKEND_IPERF = 19201
PORTS = {
    "portico": {"http": 19100, "h2c": 19100, "https": 19143, "tcp": 19300, "admin": 19901},
    "nginx": {"http": 19110, "h2c": 19111, "https": 19153, "tcp": 19310},
    "haproxy": {"http": 19120, "h2c": 19120, "https": 19163, "tcp": 19320},
    "direct": {"http": BACKEND_HTTP, "h2c": 19081, "https": 19082, "tcp": BACKEND_IPERF},
    # Portico as a user runs it: the shipped conf/portico.toml (no --config),
    # its plugins and log level, and the same manifests.
    "portico-default": {"http": 19140, "h2c": 19140, "https": 19183, "tcp": 19340, "admin": 19903},
    # The floor: a bare Pingora proxy (pingora-floor), no L4.
    "pingora": {"http": 19150, "h2c": 19150, "https": 19193},
    # The same Portico with one plugin on every request (plugin scenario).
    "portico-noop": {"http": 19130, "https": 19173, "tcp": 19330, "admin": 19902},
    # The path a request with a plugin takes, without the plugin: Portico
    # with the HTTP/1.1 fast path off (plugin scenario's baseline).
    "portico-full": {"http": 19135, "https": 19176, "tcp": 19335, "admin": 19906},
}
# Plugin-overhead variants: target -> (plugin name, module file).
PLUGIN_TARGETS = {
    "portico-noop": ("noop", "compat_noop.wasm"),
}
PLUGIN_DIR = os.path.join(ROOT, "plugins", "target", "wasm")
HOST = "bench.portico.test"
TARGETS = ["portico", "portico-default", "pingora", "nginx", "haproxy", "direct"]
# Column headers of the report.
NAMES = {"portico": "Portico (minimal)", "portico-default": "Portico (default config)", "pingora": "bare Pingora",
         "nginx": "nginx", "haproxy": "HAProxy", "direct": "direct",
         "portico-full": "Portico (full path, no plugin)", "portico-noop": "Portico (no-op plugin)"}
# Ratios of the report: (numerator, denominator).
RATIOS = [("portico", "nginx"), ("portico-default", "nginx"), ("portico", "pingora"),
          ("portico-default", "portico"), ("pingora", "nginx"), ("portico", "haproxy")]


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def need(tool, package):
    if shutil.which(tool) is None:
        sys.exit(f"bench: {tool} not found (apt-get install {package}); run.sh installs everything")


def port_free(port):
    """Refuses to start when something already listens on a port the
    harness needs: a leftover proxy from an earlier run would answer in
    place of the one measured, silently."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"bench: 127.0.0.1:{port} is already in use (a leftover proxy or backend?); stop it first")


# Set by --callgrind: proxies run under valgrind, which starts them slowly.
WAIT_SCALE = 1


def wait_port(port, timeout=15.0):
    timeout *= WAIT_SCALE
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def cpu_seconds(pids):
    """utime + stime of the processes, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / tick


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children_pids(root_pid):
    pids = [root_pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(root_pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    return pids


class Stack:
    """Backends and proxies, started once, stopped at exit."""

    def __init__(self, work, portico_bin):
        self.work = work
        self.portico_bin = portico_bin
        self.procs = {}
        # The cores the proxies run on, and their worker/thread count
        # (Portico takes its thread count from its CPU affinity).
        self.proxy_cores = PROXY_CORE
        self.workers = 1
        # --callgrind: these targets run under valgrind's callgrind.
        self.callgrind = set()

    def spawn(self, name, cmd, core, **kw):
        if name in self.callgrind:
            cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--dump-instr=no",
                   f"--callgrind-out-file={self.work}/callgrind.{name}.%p"] + cmd
        full = ["taskset", "-c", core] + cmd
        log_file = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen(full, stdout=log_file, stderr=subprocess.STDOUT, **kw)
        self.procs[name] = p
        return p

    def pids(self, name):
        return children_pids(self.procs[name].pid)

    def stop_one(self, name):
        p = self.procs.pop(name)
        p.send_signal(signal.SIGINT if name.startswith("portico") else signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()

    def stop(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGINT if name.startswith("portico") else signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    def cert(self):
        crt = os.path.join(self.work, "cert.pem")
        key = os.path.join(self.work, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={HOST}",
             "-addext", f"subjectAltName=DNS:{HOST}"],
            check=True, capture_output=True)
        with open(crt) as c, open(key) as k:
            self.crt_pem, self.key_pem = c.read(), k.read()
        with open(os.path.join(self.work, "combined.pem"), "w") as f:
            f.write(self.crt_pem + self.key_pem)
        return crt, key

    def start_backend(self, crt, key):
        conf = os.path.join(self.work, "backend-nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
daemon off;
pid {self.work}/backend.pid;
error_log {self.work}/backend-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{BACKEND_HTTP};
    listen 127.0.0.1:{PORTS['direct']['h2c']} http2;
    listen 127.0.0.1:{PORTS['direct']['https']} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    location / {{ return 200 "hello from the benchmark backend\\n"; }}
  }}
}}
""")
        self.spawn("backend", ["nginx", "-c", conf, "-e", f"{self.work}/backend-error.log"], CLIENT_CORE)
        self.spawn("iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(BACKEND_IPERF)], CLIENT_CORE)
        wait_port(BACKEND_HTTP)
        wait_port(BACKEND_IPERF)

    def start_portico(self, name="portico", plugin=None, default_config=False, full_path=False):
        p = PORTS[name]
        mdir = os.path.join(self.work, f"manifests-{name}")
        os.makedirs(mdir, exist_ok=True)
        indent = lambda s: "".join("    " + l + "\n" for l in s.splitlines())
        with open(os.path.join(mdir, "bench.yaml"), "w") as f:
            f.write(f"""
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: bench}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend, namespace: bench, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{name: http, port: {BACKEND_HTTP}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-tls, namespace: bench}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{indent(self.crt_pem)}  tls.key: |
{indent(self.key_pem)}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: bench
  namespace: bench
  # With a TLS entry, ingress-nginx (and so the default config's policy
  # plugin) redirects plain HTTP to HTTPS; the benchmark proxies both.
  annotations: {{nginx.ingress.kubernetes.io/ssl-redirect: "false"}}
spec:
  tls: [{{hosts: [{HOST}], secretName: bench-tls}}]
  defaultBackend: {{service: {{name: backend, port: {{name: http}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: iperf, namespace: bench}}
spec:
  type: LoadBalancer
  loadBalancerIP: 127.0.0.1
  ports: [{{name: tcp, port: {p['tcp']}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: iperf, namespace: bench, labels: {{kubernetes.io/service-name: iperf}}}}
addressType: IPv4
ports: [{{name: tcp, port: {BACKEND_IPERF}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
""")
        conf = os.path.join(self.work, f"{name}.toml")
        with open(conf, "w") as f:
            f.write('[log]\nlevel = "error"\n[shutdown]\ngrace_period_seconds = 1\n[l4]\nnode_ports = false\n')
            if full_path:
                f.write('[proxy]\nfast_path = false\n')
            if plugin:
                pname, wasm = plugin
                f.write(f'[plugins]\nhttp = ["{pname}"]\nreload = false\n[[plugins.load]]\n'
                        f'name = "{pname}"\npath = "{os.path.join(PLUGIN_DIR, wasm)}"\n')
        config_args = [] if default_config else ["--config", conf]
        self.spawn(name, [self.portico_bin, "run", *config_args, "--manifests", mdir,
                               "--http", f"127.0.0.1:{p['http']}", "--https", f"127.0.0.1:{p['https']}",
                               "--admin", f"127.0.0.1:{p['admin']}", "--node-address", "127.0.0.1"],
                   self.proxy_cores)
        wait_port(p["http"])
        wait_port(p["tcp"])

    def start_pingora(self, crt, key):
        p = PORTS["pingora"]
        self.spawn("pingora", [self.floor_bin, "--http", f"127.0.0.1:{p['http']}", "--https", f"127.0.0.1:{p['https']}",
                               "--cert", crt, "--key", key, "--upstream", f"127.0.0.1:{BACKEND_HTTP}"], self.proxy_cores)
        wait_port(p["http"])
        wait_port(p["https"])

    def start_nginx(self, crt, key):
        p = PORTS["nginx"]
        conf = os.path.join(self.work, "proxy-nginx.conf")
        with open(conf, "w") as f:
            # Under callgrind, one process (the worker's dump is lost when
            # the master stops it).
            single = "master_process off;" if "nginx" in self.callgrind else ""
            f.write(f"""
worker_processes {self.workers};
{single}
daemon off;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  upstream backend {{ server 127.0.0.1:{BACKEND_HTTP}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{p['http']};
    listen 127.0.0.1:{p['h2c']} http2;
    listen 127.0.0.1:{p['https']} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_session_cache off;
    ssl_session_tickets off;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
stream {{
  server {{ listen 127.0.0.1:{p['tcp']}; proxy_pass 127.0.0.1:{BACKEND_IPERF}; }}
}}
""")
        self.spawn("nginx", ["nginx", "-c", conf, "-e", f"{self.work}/nginx-error.log"], self.proxy_cores)
        wait_port(p["http"])

    def start_haproxy(self):
        p = PORTS["haproxy"]
        conf = os.path.join(self.work, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""
global
  nbthread {self.workers}
  maxconn 8000
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe_http
  bind 127.0.0.1:{p['http']}
  bind 127.0.0.1:{p['https']} ssl crt {self.work}/combined.pem alpn h2,http/1.1 no-tls-tickets
  option forwardfor
  default_backend be_http
backend be_http
  server s1 127.0.0.1:{BACKEND_HTTP}
frontend fe_tcp
  mode tcp
  bind 127.0.0.1:{p['tcp']}
  default_backend be_tcp
backend be_tcp
  mode tcp
  server s1 127.0.0.1:{BACKEND_IPERF}
""")
        self.spawn("haproxy", ["haproxy", "-db", "-f", conf], self.proxy_cores)
        wait_port(p["http"])


def client(cmd, timeout, cores=None):
    full = ["taskset", "-c", cores or CLIENT_CORE] + cmd
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[:300]}")
    return r.stdout


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = int(errors.group(1)) if errors else 0
    return {"rps": rps, "p50_ms": lat("50"), "p99_ms": lat("99"), "non2xx": errs,
            "socket_errors": sum(int(x) for x in sockerr.groups()) if sockerr else 0}


def parse_h2load(out):
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    return {"rps": float(m.group(1)), "failed": int(done.group(3)) if done else None}


class Bench:
    def __init__(self, stack, duration):
        self.stack = stack
        self.d = duration
        # results[scenario][target] = list of dicts, one per round
        self.results = {}

    def settle(self, timeout=10.0):
        """Waits until every process of the stack is nearly idle (at most one
        clock tick, 5% of a core, over 200 ms), at most `timeout` s: a proxy the previous
        run overloaded (bare Pingora at the fixed rate) keeps working off
        its backlog on the proxies' core after its client left, and would
        otherwise slow the next target's run."""
        pids = [p for name in list(self.stack.procs) for p in self.stack.pids(name)]
        deadline = time.time() + timeout
        while time.time() < deadline:
            before = cpu_seconds(pids)
            time.sleep(0.2)
            if cpu_seconds(pids) - before <= 0.011:
                return
        log(f"stack still busy after {timeout:.0f} s; measuring anyway")

    def measure(self, scenario, target, run):
        pids = self.stack.pids(target) if target != "direct" else []
        if target == "direct":
            pids = self.stack.pids("backend")
        self.settle()
        before = cpu_seconds(pids)
        res = run()
        res["cpu_s"] = cpu_seconds(pids) - before
        res["rss_kib"] = rss_kib(pids)
        if res.get("rps") and res["cpu_s"] > 0 and target != "direct":
            # Requests per CPU-second of the proxy over the run.
            res["per_cpu_s"] = res["rps"] * res.get("seconds", self.d) / res["cpu_s"]
        self.results.setdefault(scenario, {}).setdefault(target, []).append(res)
        log(f"{scenario:16} {target:8} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))

    def h1(self, target, seconds=None):
        seconds = seconds or self.d
        url = f"http://127.0.0.1:{PORTS[target]['http']}/"
        out = client(["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}", url], seconds + 30)
        return dict(parse_wrk(out), seconds=seconds)

    def h1_2core(self, target):
        # The proxies on both cores; the client shares them (and the backend core 1).
        url = f"http://127.0.0.1:{PORTS[target]['http']}/"
        out = client(["wrk", "-t2", "-c64", f"-d{self.d}s", "--latency", "-H", f"Host: {HOST}", url], self.d + 30,
                     cores=MULTI_CORES)
        return parse_wrk(out)

    def h1_fixed(self, target, rate, seconds):
        url = f"http://127.0.0.1:{PORTS[target]['http']}/"
        out = client([LOAD_BIN, "--url", url, "--host", HOST, "--rate", str(int(rate)),
                      "--connections", "32", "--duration", str(seconds)], seconds + 30)
        r = json.loads(out)
        return {"rps": r["rps"], "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "errors": r["errors"],
                "seconds": seconds}

    def h2c(self, target):
        url = f"http://127.0.0.1:{PORTS[target]['h2c']}/"
        # h2 carries the host in :authority (from the URL); a Host header too would be a 400.
        out = client(["h2load", "-c16", "-m10", "-t1", "-D", str(self.d), url], self.d + 30)
        return parse_h2load(out)

    def h2_tls(self, target):
        url = f"https://127.0.0.1:{PORTS[target]['https']}/"
        out = client(["h2load", "-c16", "-m10", "-t1", "-D", str(self.d), url], self.d + 30)
        return parse_h2load(out)

    def tls_handshakes(self, target):
        # One request per connection, no session resumption: each request is a full handshake.
        url = f"https://127.0.0.1:{PORTS[target]['https']}/"
        out = client(["wrk", "-t1", "-c32", f"-d{self.d}s", "-H", "Connection: close", "-H", f"Host: {HOST}", url], self.d + 30)
        return parse_wrk(out)

    def tcp_throughput(self, target):
        out = client(["iperf3", "-c", "127.0.0.1", "-p", str(PORTS[target]["tcp"]), "-t", str(self.d), "-J"], self.d + 30)
        j = json.loads(out)
        return {"gbit_s": j["end"]["sum_received"]["bits_per_second"] / 1e9}

    def round(self, n, scenarios):
        log(f"round {n}")
        if "plugins" in scenarios:
            # Portico alone (fast path, then full path), then with each
            # plugin, in short slices with the order rotated (as the
            # fixed-rate scenario): the plugin's cost is a difference of
            # a few percent between runs that vary by more than that, so
            # it is taken per slice, between runs back to back.
            ts = ["portico", "portico-full"] + list(PLUGIN_TARGETS)
            slices, seconds = (1, self.d) if self.d < FIXED_SLICE_S else (PLUGIN_SLICES, FIXED_SLICE_S)
            for k in range(slices):
                r = k % len(ts)
                for t in ts[r:] + ts[:r]:
                    self.measure("plugins", t, lambda: self.h1(t, seconds))
        if "h1" in scenarios:
            for t in ["nginx", "portico", "pingora", "portico-default", "haproxy", "direct"]:
                self.measure("h1", t, lambda: self.h1(t))
        if "h1_fixed" in scenarios:
            nginx_max = self.results["h1"]["nginx"][-1]["rps"]
            slices, seconds = (2, 1) if self.d < FIXED_SLICE_S else (FIXED_SLICES, FIXED_SLICE_S)
            for k in range(slices):
                # Rotated: over a round each target takes each place in
                # the order once, so no target always follows the same one.
                r = k % len(FIXED_TARGETS)
                for t in FIXED_TARGETS[r:] + FIXED_TARGETS[:r]:
                    self.measure("h1_fixed", t, lambda: self.h1_fixed(t, nginx_max * FIXED_RATE, seconds))
        for name, fn in [("h2c", self.h2c), ("h2_tls", self.h2_tls), ("tls_handshakes", self.tls_handshakes),
                         ("tcp_throughput", self.tcp_throughput)]:
            if name in scenarios:
                for t in TARGETS:
                    if name == "tcp_throughput" and "tcp" not in PORTS[t]:
                        continue
                    self.measure(name, t, lambda: fn(t))


METRICS = {
    "h1": [("rps", "req/s"), ("per_cpu_s", "req per proxy CPU-s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("rss_kib", "RSS KiB")],
    "h1_fixed": [("rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")],
    "h1_2core": [("rps", "req/s"), ("per_cpu_s", "req per proxy CPU-s"), ("p99_ms", "p99 ms"), ("rss_kib", "RSS KiB")],
    "memory": [("rss_idle_kib", "RSS idle KiB"), ("rss_kib", "RSS after h1 load KiB"), ("rps", "req/s")],
    "h2c": [("rps", "req/s"), ("per_cpu_s", "req per proxy CPU-s")],
    "h2_tls": [("rps", "req/s"), ("per_cpu_s", "req per proxy CPU-s")],
    "tls_handshakes": [("rps", "handshakes/s"), ("per_cpu_s", "handshakes per proxy CPU-s")],
    "tcp_throughput": [("gbit_s", "Gbit/s")],
}
TITLES = {
    "h1": "HTTP/1.1 keep-alive, 64 connections (wrk)",
    "h1_fixed": f"HTTP/1.1 at a fixed rate of 70% of nginx's max, 32 connections (portico-load), "
                f"{FIXED_SLICES} slices of {FIXED_SLICE_S} s per round interleaved across the targets; ratios per slice",
    "h1_2core": "HTTP/1.1 keep-alive on both cores: proxies with 2 workers/threads, wrk -t2 -c64 sharing the cores (no target)",
    "memory": f"Memory: each proxy started alone, RSS {MEMORY_IDLE_S} s after start (idle), then after an h1 run (wrk -c64)",
    "h2c": "h2c, 16 connections x 10 streams (h2load)",
    "h2_tls": "h2 over TLS, 16 connections x 10 streams (h2load)",
    "tls_handshakes": "new TLS handshakes, no resumption (wrk, Connection: close)",
    "tcp_throughput": "L4 TCP throughput (iperf3)",
}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio_median(rows_a, rows_b, key):
    rs = []
    for a, b in zip(rows_a, rows_b):
        if a.get(key) and b.get(key):
            rs.append(a[key] / b[key])
    return statistics.median(rs) if rs else None


def fmt(v, digits=3):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def table(results):
    lines = []
    for scenario, metrics in METRICS.items():
        if scenario not in results:
            continue
        r = results[scenario]
        lines.append(f"\n### {TITLES[scenario]}\n")
        heads = [NAMES[t] for t in TARGETS] + [f"{NAMES[a]} / {NAMES[b]}" for a, b in RATIOS]
        lines.append("| metric | " + " | ".join(heads) + " |")
        lines.append("|---" * (len(heads) + 1) + "|")
        for key, label in metrics:
            meds = [median([x.get(key) for x in r.get(t, [])]) for t in TARGETS]
            if all(m is None for m in meds):
                continue
            ratios = [ratio_median(r.get(a, []), r.get(b, []), key) for a, b in RATIOS]
            lines.append(f"| {label} | " + " | ".join(fmt(m) if m is not None else "-" for m in meds) + " | "
                         + " | ".join(fmt(x, 2) if x is not None else "-" for x in ratios) + " |")
        if scenario == "h1_fixed":
            lines.append(fixed_rate_pairs(results))
    return "\n".join(lines)


def fixed_rate_pairs(results):
    """How often each Portico target's p99 was at most nginx's and
    HAProxy's in the same slice: with the slice-to-slice noise of a shared
    VM, a count over many adjacent pairs says more than one median."""
    r = results.get("h1_fixed")
    if not r:
        return ""
    lines = []
    for a in ["portico", "portico-default"]:
        for b in ["nginx", "haproxy"]:
            pairs = [(x["p99_ms"], y["p99_ms"]) for x, y in zip(r.get(a, []), r.get(b, []))
                     if x.get("p99_ms") is not None and y.get("p99_ms") is not None]
            if pairs:
                at_most = sum(1 for x, y in pairs if x <= y)
                lines.append(f"- {NAMES[a]}: p99 at most {NAMES[b]}'s in {at_most} of {len(pairs)} slices")
    return "\nPaired slices (each pair ran back to back):\n\n" + "\n".join(lines) if lines else ""


def plugin_in_process(portico_bin, quick):
    """The plugin's own cost per request without the network: the
    plugin_overhead example next to the binary (same build profile)."""
    example = os.path.join(os.path.dirname(portico_bin), "examples", "plugin_overhead")
    if not os.access(example, os.X_OK):
        log(f"{example} not built; skipping the in-process plugin figure")
        return {}
    out = {}
    # (label, module, extra arguments): the no-op filter, and session-affinity
    # on a request it acts on (cookie affinity, two endpoints, the cookie set).
    cases = [(pname, wasm, []) for pname, wasm in PLUGIN_TARGETS.values()]
    cases.append(("session-affinity (cookie held)", "session_affinity.wasm", ["--sticky"]))
    for pname, wasm, extra in cases:
        r = subprocess.run(["taskset", "-c", PROXY_CORE, example, os.path.join(PLUGIN_DIR, wasm),
                            "20000" if quick else "200000"] + extra, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"plugin_overhead failed: {r.stderr.strip()[:300]}")
        out[pname] = json.loads(r.stdout)
        log(f"plugins in-process {pname}: {out[pname]}")
    return out


def quartiles(xs):
    xs = sorted(x for x in xs if x is not None)
    if len(xs) < 4:
        return "-"
    q = statistics.quantiles(xs, n=4)
    return f"{fmt(q[0])} to {fmt(q[2])}"


def plugin_table(results, duration, in_process):
    """Portico with a plugin against Portico alone, same run, same core.
    A request with a plugin takes the full path, so the plugin's cost is
    measured against the full path alone; the fast path's figure beside
    it is what a route without plugins costs."""
    r = results.get("plugins")
    if not r:
        return ""
    lines = ["\n### Plugin overhead: HTTP/1.1 keep-alive, 64 connections (wrk), Portico alone vs one plugin on every request\n",
             "| plugin | req/s fast path alone | req/s full path alone | req/s with plugin | proxy CPU per request: fast path alone (us) "
             "| full path alone (us) | with plugin (us) | plugin cost per request (us) | cost, quartiles over slices (us) |",
             "|---|---|---|---|---|---|---|---|---|"]
    fast = r.get("portico", [])
    base = r.get("portico-full", [])
    def us_per_req(row):
        if not row.get("rps") or not row.get("cpu_s"):
            return None
        return row["cpu_s"] / (row["rps"] * row.get("seconds", duration)) * 1e6
    for t, (pname, _) in PLUGIN_TARGETS.items():
        rows = r.get(t, [])
        costs = [us_per_req(w) - us_per_req(b) for b, w in zip(base, rows)
                 if us_per_req(w) is not None and us_per_req(b) is not None]
        lines.append(f"| {pname} | {fmt(median([x.get('rps') for x in fast]))} | {fmt(median([x.get('rps') for x in base]))} | "
                     f"{fmt(median([x.get('rps') for x in rows]))} | {fmt(median([us_per_req(x) for x in fast]))} | "
                     f"{fmt(median([us_per_req(x) for x in base]))} | "
                     f"{fmt(median([us_per_req(x) for x in rows]))} | {fmt(median(costs))} | {quartiles(costs)} |")
    lines.append("\nPlugin cost per request = the proxy's CPU time per request with the plugin minus the full path's without it, "
                 "per slice (the targets' runs back to back), median over the slices (CPU time from /proc; the proxies are pinned to one core). A plugin on a route also takes "
                 "the route off the HTTP/1.1 fast path: the difference between the first two CPU columns. On this shared "
                 "2-core VM the per-request CPU varies by several microseconds between runs, so these differences are noisy.")
    if in_process:
        lines.append("\nIn process (`gateway/wasm/examples/plugin_overhead.rs`: the same request's proxy-wasm phases through the "
                     "plugin in a loop, no network, minus the same loop without the plugin; median of 5 rounds):\n")
        lines.append("| plugin | ns per request |")
        lines.append("|---|---|")
        for pname, r in in_process.items():
            lines.append(f"| {pname} | {r['ns_per_request_median']:.0f} |")
    return "\n".join(lines)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# Not the default config: under valgrind, compiling its plugins with
# cranelift at start takes over 10 minutes. Where no plugin applies (the
# benchmark's route) its request path is the minimal config's.
CALLGRIND_TARGETS = ["portico", "portico-default", "pingora", "nginx", "haproxy", "portico-full", "portico-noop"]


def multi_core(stack, bench, rounds, crt, key):
    """The same proxies restarted on both cores with 2 workers each, then
    HTTP/1.1 keep-alive rounds with the client on both cores too."""
    for name in [n for n in list(stack.procs) if n not in ("backend", "iperf3")]:
        stack.stop_one(name)
    stack.proxy_cores, stack.workers = MULTI_CORES, 2
    stack.start_portico()
    stack.start_portico("portico-default", default_config=True)
    stack.start_pingora(crt, key)
    stack.start_nginx(crt, key)
    stack.start_haproxy()
    multi = ["portico", "portico-default", "pingora", "nginx", "haproxy"]
    for t in multi:
        check_proxies(t)
        client(["wrk", "-t2", "-c16", "-d1s", "-H", f"Host: {HOST}", f"http://127.0.0.1:{PORTS[t]['http']}/"], 30,
               cores=MULTI_CORES)
    for n in range(1, rounds + 1):
        log(f"multi-core round {n}")
        for t in multi:
            bench.measure("h1_2core", t, lambda: bench.h1_2core(t))


MEMORY_TARGETS = ["portico", "portico-default", "pingora", "nginx", "haproxy"]


def memory_alone(stack, bench, rounds, crt, key, idle_s):
    """Each proxy started alone, as a user runs it: the other scenarios run
    several Portico processes of one binary side by side, and code pages
    they share stay mapped in each (the start-up trim cannot page out a
    page another process maps), so the h1 table's RSS column reads high."""
    for name in [n for n in list(stack.procs) if n not in ("backend", "iperf3")]:
        stack.stop_one(name)
    stack.proxy_cores, stack.workers = PROXY_CORE, 1
    starts = {"portico": lambda: stack.start_portico(),
              "portico-default": lambda: stack.start_portico("portico-default", default_config=True),
              "pingora": lambda: stack.start_pingora(crt, key),
              "nginx": lambda: stack.start_nginx(crt, key), "haproxy": lambda: stack.start_haproxy()}
    for n in range(1, rounds + 1):
        log(f"memory round {n}")
        for t in MEMORY_TARGETS:
            starts[t]()
            check_proxies(t)
            time.sleep(idle_s)
            idle = rss_kib(stack.pids(t))
            bench.measure("memory", t, lambda: dict(bench.h1(t), rss_idle_kib=idle))
            stack.stop_one(t)


def check_proxies(target):
    url = f"http://127.0.0.1:{PORTS[target]['http']}/"
    out = subprocess.run(["curl", "-s", "-i", "-H", f"Host: {HOST}", url], capture_output=True, text=True, timeout=30).stdout
    if not (out.startswith("HTTP/1.1 200") and "hello from the benchmark backend" in out):
        sys.exit(f"bench: {target} does not proxy to the backend: {out[:200]!r}")


def callgrind_run(stack, requests, crt, key, targets):
    """Instructions per request of each target in CALLGRIND_TARGETS, each
    started alone under callgrind twice: once serving `requests` HTTP/1.1
    keep-alive requests over 8 connections (h2load --h1), once twice as
    many, both after the same warm-up; the difference of the two runs'
    totals over `requests` is the cost of a request, without start-up and
    shutdown. Instruction counts do not depend on the machine's load, so
    these figures compare builds across runs where timings cannot."""
    starts = {"portico": lambda: stack.start_portico(),
              "portico-default": lambda: stack.start_portico("portico-default", default_config=True),
              "pingora": lambda: stack.start_pingora(crt, key),
              "nginx": lambda: stack.start_nginx(crt, key), "haproxy": lambda: stack.start_haproxy(),
              "portico-full": lambda: stack.start_portico("portico-full", full_path=True),
              "portico-noop": lambda: stack.start_portico("portico-noop", PLUGIN_TARGETS["portico-noop"])}
    out = {}
    for t in targets:
        totals = []
        for n in (requests, 2 * requests):
            for f in os.listdir(stack.work):
                if f.startswith(f"callgrind.{t}."):
                    os.remove(os.path.join(stack.work, f))
            starts[t]()
            url = f"http://127.0.0.1:{PORTS[t]['http']}/"
            load = ["h2load", "--h1", "-c8", "-t1", url]
            check_proxies(t)
            client(load + ["-n", "200"], 600)
            res = parse_h2load(client(load + ["-n", str(n)], 1200))
            if res.get("failed"):
                raise RuntimeError(f"callgrind {t}: {res['failed']} requests failed")
            stack.stop_one(t)
            total = 0
            for f in os.listdir(stack.work):
                if f.startswith(f"callgrind.{t}."):
                    with open(os.path.join(stack.work, f)) as fh:
                        for line in fh:
                            if line.startswith("totals:") or line.startswith("summary:"):
                                total += int(line.split()[1])
                                break
            totals.append(total)
        out[t] = (totals[1] - totals[0]) / requests
        log(f"callgrind {t:10} {out[t]:,.0f} instructions per request")
    return out


def callgrind_table(per_req):
    base = per_req.get("nginx")
    lines = ["\n### Instructions per HTTP/1.1 keep-alive request (callgrind)\n",
             "| target | instructions per request | x nginx |", "|---|---|---|"]
    for t, ir in per_req.items():
        lines.append(f"| {NAMES[t]} | {ir:,.0f} | {fmt(ir / base, 2) if base else '-'} |")
    if "portico-noop" in per_req and "portico-full" in per_req:
        lines.append(f"\nA no-op proxy-wasm filter (`compat/noop`) on every request costs "
                     f"{per_req['portico-noop'] - per_req['portico-full']:,.0f} instructions per request end to end: "
                     "Portico with it minus Portico's full path without it (the path a request with a plugin takes).")
    return "\n".join(lines)


def main():
    global LOAD_BIN, WAIT_SCALE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s per scenario: proves the harness works")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per scenario run")
    ap.add_argument("--portico", default=os.path.join(ROOT, "target", "release", "portico"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target", "release", "portico-load"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "target", "release", "pingora-floor"),
                    help="the bare Pingora proxy (integration-tests/bench/pingora-floor)")
    ap.add_argument("--scenarios", default="h1,h1_fixed,h2c,h2_tls,tls_handshakes,tcp_throughput,plugins,memory,h1_2core")
    ap.add_argument("--out", help="write the Markdown report here (default: RESULTS.md unless --quick)")
    ap.add_argument("--callgrind", type=int, metavar="N",
                    help="instead of timing: count instructions per request under callgrind over N requests "
                         f"({', '.join(CALLGRIND_TARGETS)}; stable across runs on a noisy machine)")
    ap.add_argument("--callgrind-targets", metavar="T1,T2",
                    help=f"with --callgrind: only these targets (of {','.join(CALLGRIND_TARGETS)})")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1
    LOAD_BIN = args.load
    for tool, pkg in [("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("h2load", "nghttp2-client"),
                      ("iperf3", "iperf3"), ("taskset", "util-linux"), ("openssl", "openssl")]:
        need(tool, pkg)
    for b in [args.portico, args.load, args.floor]:
        if not os.access(b, os.X_OK):
            sys.exit(f"bench: {b} not found; build it first (run.sh does: cargo build --release -p portico -p portico-load)")
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        sys.exit("bench: nginx stream module missing (apt-get install libnginx-mod-stream)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs at least 2 cores (proxy on core 0, client and backend on core 1)")
    scenarios = args.scenarios.split(",")

    for ports in PORTS.values():
        for port in set(ports.values()):
            port_free(port)
    work = tempfile.mkdtemp(prefix="portico-bench-")
    stack = Stack(work, args.portico)
    stack.floor_bin = args.floor
    if args.callgrind:
        need("valgrind", "valgrind")
        targets = args.callgrind_targets.split(",") if args.callgrind_targets else CALLGRIND_TARGETS
        unknown = [t for t in targets if t not in CALLGRIND_TARGETS]
        if unknown:
            sys.exit(f"bench: --callgrind-targets: unknown {', '.join(unknown)} (known: {', '.join(CALLGRIND_TARGETS)})")
        if "portico-noop" in targets:
            wasm = os.path.join(PLUGIN_DIR, PLUGIN_TARGETS["portico-noop"][1])
            if not os.path.exists(wasm):
                sys.exit(f"bench: {wasm} missing; build the plugins first (plugins/build.sh; run.sh does)")
        stack.callgrind = set(targets)
        WAIT_SCALE = 20
        try:
            crt, key = stack.cert()
            stack.start_backend(crt, key)
            text = callgrind_table(callgrind_run(stack, args.callgrind, crt, key, targets))
        finally:
            stack.stop()
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return
    bench = Bench(stack, args.duration)
    started = time.time()
    try:
        crt, key = stack.cert()
        stack.start_backend(crt, key)
        stack.start_portico()
        stack.start_portico("portico-default", default_config=True)
        stack.start_pingora(crt, key)
        if "plugins" in scenarios:
            for t, plugin in PLUGIN_TARGETS.items():
                wasm = os.path.join(PLUGIN_DIR, plugin[1])
                if not os.path.exists(wasm):
                    sys.exit(f"bench: {wasm} missing; build the plugins first (plugins/build.sh; run.sh does)")
                stack.start_portico(t, plugin)
            stack.start_portico("portico-full", full_path=True)
        stack.start_nginx(crt, key)
        stack.start_haproxy()
        # Every target must proxy (200 from the backend), not answer itself:
        # wrk does not count a 3xx as an error.
        extra = [t for t in list(PLUGIN_TARGETS) + ["portico-full"] if "plugins" in scenarios]
        for t in TARGETS + extra:
            check_proxies(t)
        # Warm every path once (upstream pools, caches).
        for t in TARGETS + extra:
            client(["wrk", "-t1", "-c8", "-d1s", "-H", f"Host: {HOST}", f"http://127.0.0.1:{PORTS[t]['http']}/"], 30)
        for n in range(1, args.rounds + 1):
            bench.round(n, scenarios)
        in_process = plugin_in_process(args.portico, args.quick) if "plugins" in scenarios else {}
        if "memory" in scenarios:
            memory_alone(stack, bench, min(args.rounds, 2), crt, key, 4 if args.quick else MEMORY_IDLE_S)
        if "h1_2core" in scenarios:
            multi_core(stack, bench, args.rounds, crt, key)
    finally:
        stack.stop()
    elapsed = time.time() - started

    # Every target must have answered successfully; otherwise the ratios mean nothing.
    failures = []
    for scenario, per_target in bench.results.items():
        for t, rows in per_target.items():
            for r in rows:
                socket_errors = r.get("socket_errors") and scenario != "tls_handshakes"
                if r.get("non2xx") or socket_errors or r.get("failed") or r.get("errors"):
                    failures.append(f"{scenario}/{t}: {r}")
    report = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; proxies pinned to core {PROXY_CORE}, backend + load generator on core {CLIENT_CORE}",
        f"- rounds: {args.rounds} x {args.duration} s per scenario and target, interleaved; medians, ratios per round then median",
        f"- command: `integration-tests/bench/run.sh{' --quick' if args.quick else ''}` (bench.py {' '.join(sys.argv[1:])}), {elapsed:.0f} s",
        "- backend: nginx `return 200` (34-byte body), 1 worker; nginx proxy: 1 worker, upstream keepalive; HAProxy: nbthread 1, http-reuse always",
        "- 'req per proxy CPU-s' = requests/s divided by the proxy's CPU seconds per second of run (from /proc): the efficiency figure when the client side saturates first",
        table(bench.results),
        plugin_table(bench.results, args.duration, in_process),
    ]
    if failures:
        report.append("\n## Errors during the run\n\n" + "\n".join(f"- {f}" for f in failures))
    text = "\n".join(report) + "\n"
    print(text)
    out = args.out or (None if args.quick else os.path.join(HERE, "RESULTS.md"))
    if out:
        with open(out, "w") as f:
            f.write(text)
        log(f"wrote {out}")
    missing = [s for s in scenarios if s not in bench.results]
    if missing:
        sys.exit(f"bench: no results for {missing}")
    if failures:
        sys.exit("bench: requests failed during the run (see the report)")


if __name__ == "__main__":
    main()
