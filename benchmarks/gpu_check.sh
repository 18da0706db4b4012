#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU and a CUDA build of torch (torchvision
# beside it for the comparison), from the repository root:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else ./gpu_check_out
#
# builds pydetops with its CUDA kernels for the visible GPU, runs every CUDA test,
# then the CUDA benchmark against torchvision's CUDA ops, and writes one report,
# OUT_DIR/gpu_report.md (plus the logs and the benchmark's JSON). Each stage has a
# time limit so that the whole script stays under about 8 minutes; a failed stage is
# recorded in the report and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
report="$out/gpu_report.md"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

stage() {  # stage NAME LIMIT_S COMMAND...: run with a limit, log to $out/NAME.log, record the outcome
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict="ok"
  [ $rc -eq 0 ] || verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
  echo "- **$name**: $verdict in $((SECONDS - t0)) s (log: $name.log)" >>"$report"
  echo "   -> $verdict in $((SECONDS - t0)) s"
  tail -n 5 "$out/$name.log"
  return $rc
}

{
  echo "# pydetops GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo "- python: $($py -c 'import sys; print(sys.version.split()[0])')"
  echo "- torch: $($py -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())')"
  echo "- torchvision: $($py -c 'import torchvision; print(torchvision.__version__)' 2>&1 | tail -1)"
  echo
  echo "## Stages"
} >"$report"

if ! $py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "- no CUDA device is visible to this torch: nothing to check" >>"$report"
  cat "$report"
  exit 1
fi

# The build: CUDA on, architectures from the visible GPU (CMakeLists.txt), all cores.
export PYDETOPS_CUDA=ON MAX_JOBS="${MAX_JOBS:-$(nproc)}" PYDETOPS_BUILD_DIR="${PYDETOPS_BUILD_DIR:-build/gpu}"
stage build 300 $py -m pip install --no-build-isolation --no-deps -v . || { cat "$report"; exit 1; }
stage info 60 $py -m pydetops.info
# Every test that runs on CUDA: the device-parametrised cases and the CUDA-only module.
stage tests 180 $py -m pytest tests -q -x -k "cuda" -p no:cacheprovider
stage parity 120 $py -m pytest tests/test_torchvision_parity.py -q -p no:cacheprovider
# The table goes to stdout (bench.log), progress to stderr (bench.progress.log).
stage bench 240 bash -c "$py -m pydetops.bench --device cuda --json '$out/bench_cuda.json' 2>'$out/bench.progress.log'"

{
  echo
  echo "## Test summary"
  echo '```'
  tail -n 3 "$out/tests.log"
  tail -n 1 "$out/parity.log"
  echo '```'
  echo
  echo "## CUDA benchmark (pydetops vs torchvision, medians, same process)"
  echo '```'
  cat "$out/bench.log"
  echo '```'
} >>"$report"
cat "$report"
