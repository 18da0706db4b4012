"""``python -m pydetops.bench [--quick] [--device cpu|cuda] [--filter SUBSTR] [--json FILE]``

Times every pydetops op against torchvision.ops when it imports and works here,
otherwise against a plain-torch equivalent (labelled as such), and prints medians
and speed-ups measured side by side in this one run.
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
from pydetops.bench._core import format_table, run_cases


def collect_cases(device: str, quick: bool, name_filter: str):
    cases = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_")):
        module = importlib.import_module(f"pydetops.bench.{mod}")
        for case in module.cases(device, quick):
            if name_filter and name_filter not in case.op:
                continue
            cases.append(case)
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydetops.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--filter", default="", help="only ops whose name contains this")
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per side (default 9, quick 3)")
    parser.add_argument("--json", metavar="FILE", help="also save the rows as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    repeats = args.repeats or (3 if args.quick else 9)

    info = pydetops.build_info()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"pydetops {info['version']} | torch {torch.__version__} | {args.device}: {device_name} | "
          f"threads {torch.get_num_threads()}", flush=True)
    cases = collect_cases(args.device, args.quick, args.filter)
    rows = run_cases(cases, repeats, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(pydetops=info, torch=torch.__version__, device=args.device, device_name=device_name,
                           threads=torch.get_num_threads(), rows=rows), f, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
