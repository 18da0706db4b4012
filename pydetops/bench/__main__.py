"""``python -m pydetops.bench [--quick] [--threads N] [--device cpu|cuda] [--filter S] [--repeats N] [--json FILE]``

Times every pydetops op against torchvision.ops when it imports and works here,
otherwise against a plain-torch equivalent (the header says which, and why), side by
side in this one run; prints min / median / max per side, the speed-up of the medians,
and flags rows not to trust: WIDE (the spread of the calls is too wide) and WAIT (the
calls mostly waited for a CPU).

--quick: small inputs and 3 timed calls per side (about 2 minutes on 2 cores instead of
many): a smoke run to see that everything works, not figures to quote.
--threads N: torch.set_num_threads(N) before timing (default: torch's own default,
usually the number of physical cores). On a shared or busy machine, fewer threads than
CPUs give steadier figures.
"""
import argparse
import importlib
import json
import pkgutil
import platform
import sys

import torch

import pydetops
import pydetops.bench as bench_pkg
from pydetops.bench._core import (CPU_SHARE_LIMIT, RERUN_HINT, SPREAD_LIMIT, SPREAD_RULE, WAIT_RULE, format_load,
                                  format_table, machine_load, run_cases, torchvision_status)


def collect_cases(device: str, quick: bool, name_filter: str):
    cases = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_")):
        module = importlib.import_module(f"pydetops.bench.{mod}")
        for case in module.cases(device, quick):
            if name_filter and name_filter not in case.op:
                continue
            cases.append(case)
    return cases


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m pydetops.bench", description=doc[1],
                                     epilog=("The header shows the machine's load average and warns when it is "
                                             "high for the thread count. The trust column flags rows: "
                                             + " ".join([SPREAD_RULE, WAIT_RULE, RERUN_HINT])))
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, 3 timed calls per side: a smoke run (minutes), not figures to quote")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) before timing (default: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--filter", default="", help="only ops whose name contains this")
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per side (default 9, quick 3)")
    parser.add_argument("--json", metavar="FILE", help="also save the header fields and the rows as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected a positive number of threads, got {args.threads}")
    if args.repeats < 0:
        parser.error(f"--repeats: expected a positive number, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    threads = torch.get_num_threads()

    info = pydetops.build_info()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    load = machine_load(threads)            # read before any timing: what else runs here
    tv = torchvision_status(refresh=True)   # the case modules use this same result
    print(f"pydetops {info['version']} | torch {torch.__version__} | {args.device}: {device_name} | "
          f"threads {threads}{' (--threads)' if args.threads is not None else ''}", flush=True)
    print(format_load(load))
    if load["warning"]:
        print(load["warning"])
    print(tv.describe(), flush=True)
    cases = collect_cases(args.device, args.quick, args.filter)
    rows = run_cases(cases, repeats, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_table(rows))
    load_after = machine_load(threads)
    wide, wait = sum(r["wide"] for r in rows), sum(r["waited"] for r in rows)
    print(f"rows flagged: {wide} WIDE, {wait} WAIT, of {len(rows)}; at the end {format_load(load_after)} "
          "(includes this run's threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(pydetops=info, torch=torch.__version__, device=args.device, device_name=device_name,
                           threads=threads, quick=args.quick, repeats=repeats, load_before=load,
                           load_after=load_after,
                           torchvision=dict(found=tv.found, usable=tv.usable, version=tv.version, reason=tv.reason),
                           spread_limit=SPREAD_LIMIT, spread_rule=SPREAD_RULE, cpu_share_limit=CPU_SHARE_LIMIT,
                           wait_rule=WAIT_RULE, rows=rows), f, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
