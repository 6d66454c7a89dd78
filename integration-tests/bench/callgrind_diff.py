#!/usr/bin/env python3
"""Instructions per request by function (self cost) of two callgrind
profiles over the same number of requests, largest difference first:
where one proxy spends what the other does not.

    callgrind_diff.py PROFILE_A PROFILE_B REQUESTS [ROWS]
"""
import re
import subprocess
import sys


def self_costs(path, requests):
    out = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True, check=True).stdout
    costs, on = {}, False
    for line in out.splitlines():
        if "file:function" in line:
            on = True
            continue
        m = on and re.match(r"\s*([\d,]+)\s+(\([^)]*\)\s+)?(.*)$", line)
        if not m:
            continue
        name = re.sub(r" \[.*$", "", m.group(3)).replace("???:", "")
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", "")) / requests
    return costs


def main():
    a_path, b_path, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    a, b = self_costs(a_path, requests), self_costs(b_path, requests)
    print(f"instructions per request: A {sum(a.values()):,.0f}  B {sum(b.values()):,.0f}")
    print(f"{'A - B':>8} {'A':>8} {'B':>8}  function")
    names = sorted(set(a) | set(b), key=lambda k: -(a.get(k, 0) - b.get(k, 0)))
    for k in names[:rows] + ["..."] + names[-rows // 4:]:
        if k == "...":
            print("...")
            continue
        print(f"{a.get(k, 0) - b.get(k, 0):8.0f} {a.get(k, 0):8.0f} {b.get(k, 0):8.0f}  {k[:140]}")


if __name__ == "__main__":
    main()
