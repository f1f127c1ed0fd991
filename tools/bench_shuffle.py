"""Benchmark kexue-shuffle against shuf and sort -R, next to the disk's sequential bandwidth.

From https://kexue.fm/archives/8662 (chapter ``global-shuffle``, which runs the same measurements
through the same library functions). Example (run it under the machine's heavy-job lock):

    flock /tmp/kexue-heavy.lock .venv/bin/python tools/bench_shuffle.py --size 1G --mem 64M \\
        --dir /var/tmp/kexue-bench --json /tmp/bench.json --profile

Every tool's output is checked to hold exactly the input's lines (multiset fingerprint). Peak RSS
is each process's own ``ru_maxrss`` (``kexue.shuffle.run_measured``). By default runs are cold at
both ends (``compare_tools(cold=True)``): the input is evicted from the page cache before each run
and the output fsync'd before the clock stops; ``--warm`` leaves the page cache alone.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from kexue import shuffle as ks

AVG_LINE = 166  # bytes per line of make_test_file with its defaults (measured)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="input size (default 1G)")
    p.add_argument("--mem", default="64M", help="memory budget for kexue-shuffle and sort -S")
    p.add_argument("--dir", default="/var/tmp/kexue-shuffle-bench", help="work directory (same disk as data)")
    p.add_argument("--tools", default="fair,merge,rounds,shuf,sort", help="comma list")
    p.add_argument("--warm", action="store_true", help="do not evict the input / fsync the outputs")
    p.add_argument("--keep", action="store_true", help="keep the generated input")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool (median time reported)")
    p.add_argument("--no-disk", action="store_true", help="skip the O_DIRECT bandwidth measurement")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--profile", action="store_true", help="cProfile the fair mode in-process and print it")
    args = p.parse_args(argv)

    os.makedirs(args.dir, exist_ok=True)
    size = ks.parse_size(args.size)
    src = os.path.join(args.dir, f"input-{args.size}.txt")
    if not os.path.exists(src):
        t = time.perf_counter()
        ks.make_test_file(src, max(1, size // AVG_LINE), seed=0)
        print(f"generated {src} ({os.path.getsize(src) / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
    nbytes = os.path.getsize(src)
    results = {"input_bytes": nbytes, "mem_budget": ks.parse_size(args.mem), "cold": not args.warm,
               "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "cpus": os.cpu_count()}
    if not args.no_disk:
        disk = ks.disk_bandwidth(args.dir, "1G")
        disk["bound_MBps"] = 1 / (2 / disk["read_MBps"] + 2 / disk["write_MBps"])
        results["disk"] = disk
        print(json.dumps(disk, indent=1))
    runs = ks.compare_tools(src, args.dir, args.mem, args.tools.split(","), cold=not args.warm, repeat=args.repeat)
    for tool, r in runs.items():
        frac = f"  {r['MBps'] / results['disk']['bound_MBps']:.2f} of the disk bound" if "disk" in results else ""
        print(f"{tool:8s} {r['seconds']:8.2f} s {r['MBps']:8.1f} MB/s  peak RSS {r['peak_rss'] / 2**20:8.1f} MiB  "
              f"correct={r['correct']}{frac}", flush=True)
    results["runs"] = runs
    if args.profile:
        out = os.path.join(args.dir, "profiled.out")
        text, st = ks.profile_shuffle(src, out, args.mem, top=18, seed=0, mode="fair")
        os.unlink(out)
        print(f"# cProfile of shuffle_files(mode='fair', mem={args.mem!r}) on {nbytes / 1e6:.0f} MB: "
              f"{st.seconds:.2f} s, {st.mb_per_s:.0f} MB/s (pass 1 {st.pass1_seconds:.2f} s, "
              f"pass 2 {st.pass2_seconds:.2f} s)\n{text}")
    if not args.keep:
        os.unlink(src)
        if not os.listdir(args.dir):
            shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
