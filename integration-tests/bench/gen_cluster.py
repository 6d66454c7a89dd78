#!/usr/bin/env python3
"""Generates a large cluster as a manifests folder, and measures how fast an
EndpointSlice change reaches live routing and how much memory Portico uses.

    gen_cluster.py generate --out DIR [--services 10000] [--endpoints 10] [--ingresses 5000]
    gen_cluster.py measure --portico PATH [--services ...] [--changes 20]

`measure` generates the folder, starts `portico run` on it, then rewrites one
EndpointSlice file at a time (adding an endpoint) and polls the admin
`/explain` answer for that Service's host until the new endpoint shows up.
It prints propagation p50/p99 and the gateway's RSS. Endpoint addresses are
in 10.0.0.0/8 and are never contacted: nothing is sent to them.

The same folder feeds the Kubernetes-source benchmark (`kube_scale`, which
loads it into the API-server double); see SCALE.md.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def ip(i):
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def service_yaml(s):
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{s % 100}}}\n"
        f"spec: {{ports: [{{name: http, port: 80}}]}}\n"
    )


def slice_yaml(s, endpoints, extra=0):
    eps = "".join(
        f"- addresses: [{ip(s * 16 + e)}]\n  conditions: {{ready: true}}\n"
        for e in range(endpoints + extra)
    )
    return (
        f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: svc-{s}-1, namespace: ns-{s % 100}, labels: {{kubernetes.io/service-name: svc-{s}}}}}\n"
        f"addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
    )


def ingress_yaml(i, services):
    s = (i * 2) % services
    return (
        f"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ing-{i}, namespace: ns-{s % 100}}}\n"
        f"spec:\n  rules:\n  - host: host-{i}.example.com\n    http:\n      paths:\n"
        f"      - {{path: /, pathType: Prefix, backend: {{service: {{name: svc-{s}, port: {{name: http}}}}}}}}\n"
    )


def generate(out, services, endpoints, ingresses):
    # Services and their EndpointSlices in separate files, as the API keeps
    # them: an endpoint change rewrites only a slice.
    for d in ["services", "slices", "ingresses"]:
        os.makedirs(os.path.join(out, d), exist_ok=True)
    for s in range(services):
        with open(os.path.join(out, "services", f"svc-{s}.yaml"), "w") as f:
            f.write(service_yaml(s))
        with open(os.path.join(out, "slices", f"svc-{s}.yaml"), "w") as f:
            f.write(slice_yaml(s, endpoints))
    per_file = 100
    for start in range(0, ingresses, per_file):
        with open(os.path.join(out, "ingresses", f"ing-{start}.yaml"), "w") as f:
            f.write("---\n".join(ingress_yaml(i, services) for i in range(start, min(start + per_file, ingresses))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(args):
    work = tempfile.mkdtemp(prefix="portico-scale-")
    try:
        t0 = time.time()
        generate(work, args.services, args.endpoints, args.ingresses)
        gen_s = time.time() - t0
        admin, http, https = free_port(), free_port(), free_port()
        conf = os.path.join(work, "portico.toml")
        with open(conf, "w") as f:
            f.write('[log]\nlevel = "warn"\n[shutdown]\ngrace_period_seconds = 1\n')
        t0 = time.time()
        # The default config is what users run: the embedded conf/portico.toml
        # with its plugins (and its log level).
        config_args = [] if args.default_config else ["--config", conf]
        p = subprocess.Popen([args.portico, "run", *config_args, "--manifests", work,
                              "--admin", f"127.0.0.1:{admin}", "--http", f"127.0.0.1:{http}",
                              "--https", f"127.0.0.1:{https}"], stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{admin}"
        while True:
            try:
                if get(base + "/readyz").startswith(b"ready"):
                    break
            except OSError:
                pass
            if p.poll() is not None:
                sys.exit("portico exited during start")
            time.sleep(0.1)
        start_s = time.time() - t0
        idle_rss = rss_kib(p.pid)
        lat = []
        for c in range(args.changes):
            i = (c * 37) % args.ingresses
            s = (i * 2) % args.services
            new_ep = ip(s * 16 + args.endpoints)
            path = os.path.join(work, "slices", f"svc-{s}.yaml")
            tmp = os.path.join(work, f"svc-{s}.tmp")
            with open(tmp, "w") as f:
                f.write(slice_yaml(s, args.endpoints, extra=1))
            t0 = time.time()
            os.rename(tmp, path)
            deadline = t0 + 60
            while time.time() < deadline:
                v = json.loads(get(f"{base}/explain?host=host-{i}.example.com&path=/"))
                if any(e["address"].startswith(new_ep + ":") for e in (v.get("pool") or {}).get("endpoints", [])):
                    break
                time.sleep(0.002)
            else:
                sys.exit(f"change {c} did not propagate in 60 s")
            lat.append((time.time() - t0) * 1000)
            # Put it back so the next change is a real change again.
            with open(tmp, "w") as f:
                f.write(slice_yaml(s, args.endpoints))
            os.rename(tmp, path)
            time.sleep(0.5)
        peak_rss = rss_kib(p.pid)
        p.terminate()
        p.wait(timeout=10)
        lat.sort()
        q = lambda x: lat[min(len(lat) - 1, int(round((len(lat) - 1) * x)))]
        print(json.dumps({
            "services": args.services, "endpoints": args.services * args.endpoints, "ingresses": args.ingresses,
            "generate_s": round(gen_s, 1), "start_to_ready_s": round(start_s, 1),
            "propagation_ms_p50": round(q(0.5), 1), "propagation_ms_p99": round(q(0.99), 1),
            "propagation_ms_max": round(lat[-1], 1), "changes": len(lat),
            "rss_mib_idle": round(idle_rss / 1024, 1), "rss_mib_after_changes": round(peak_rss / 1024, 1),
            "config": "default (conf/portico.toml, plugins loaded)" if args.default_config else "minimal (no plugins)",
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["generate", "measure"])
    ap.add_argument("--out")
    ap.add_argument("--portico")
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10, help="per Service")
    ap.add_argument("--ingresses", type=int, default=5000)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--default-config", action="store_true",
                    help="measure: run with the embedded default config (its plugins loaded) instead of a minimal one")
    args = ap.parse_args()
    if args.command == "generate":
        if not args.out:
            sys.exit("generate needs --out")
        generate(args.out, args.services, args.endpoints, args.ingresses)
    else:
        if not args.portico:
            sys.exit("measure needs --portico")
        measure(args)


if __name__ == "__main__":
    main()
