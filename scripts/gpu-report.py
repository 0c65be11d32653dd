#!/usr/bin/env python3
"""Gathers the runs of scripts/gpu-bench.sh into benches/results/.

Usage: scripts/gpu-report.py [--suffix S] OUT_DIR RUN_DIR [RUN_DIR...]

Each RUN_DIR is an unpacked runs.tar.gz (or any folder of `sigmux bench
--json` reports). Writes, per key kind, `<date>-<gpu>-<kind>.json`: an object
whose "runs" map each run's name (the report's file name without date and
GPU) to its report exactly as sigmux wrote it (`<date>-<gpu>-<kind>-S.json`
with --suffix, for a second set of runs on the same day); a later RUN_DIR's run of the
same name is kept beside the first with a `#2` suffix. Prints a Markdown
table per kind to paste into the `.md` beside it.
"""
import collections
import glob
import json
import os
import re
import sys


def main() -> None:
    args = sys.argv[1:]
    suffix = ""
    if args[:1] == ["--suffix"]:
        suffix, args = "-" + args[1], args[2:]
    out, dirs = args[0], args[1:]
    kinds = collections.defaultdict(dict)
    stem = None
    for d in dirs:
        for f in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                j = json.load(open(f))
            except ValueError:
                continue
            if "ops_per_sec" not in j or "kind" not in j:
                continue
            name = os.path.basename(f)[:-5]
            m = re.match(r"(\d{4}-\d\d-\d\d)-(.+?)-((?:rsa|p256|p384|ed25519).*)$", name)
            if m:
                stem = stem or f"{m.group(1)}-{m.group(2)}"
                name = m.group(3)
            runs = kinds[j["kind"]]
            n, i = name, 2
            while n in runs:
                n, i = f"{name}#{i}", i + 1
            runs[n] = j
    if stem is None:
        sys.exit("no run named <date>-<gpu>-<run>.json found")
    for kind, runs in sorted(kinds.items()):
        path = os.path.join(out, f"{stem}-{kind}{suffix}.json")
        with open(path, "w") as fh:
            json.dump({"runs": runs}, fh, indent=2)
            fh.write("\n")
        print(f"\n## {kind} ({path})\n")
        print("| run | batch | check / mapping | s | ops/s | p50 µs | p99 µs | raw ops/s | ratio |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        order = sorted(runs.items(), key=lambda kv: (kv[1]["max_batch"], kv[0]))
        for n, j in order:
            how = j.get("cuda_rsa_mapping") if kind.startswith("rsa") else j.get("cuda_check")
            raw = j.get("raw_ops_per_sec")
            ratio = j.get("ratio")
            print(
                f"| {n} | {j['max_batch']:,} | {how} | {j['seconds']:g} | {j['ops_per_sec']:,.0f} "
                f"| {j['p50_us']:,.0f} | {j['p99_us']:,.0f} | "
                + (f"{raw:,.0f} | {ratio:.3f} |" if raw else " | |")
            )


if __name__ == "__main__":
    main()
