#!/usr/bin/env bash
# Every GPU check of issue 12 in one run of at most 8 minutes, for a lent CUDA machine whose
# time is short: the CUDA tests, the loss benchmark on CUDA (launches, bandwidth, against the
# plain expression, first-call compile time) and the paper-256 trainer in bf16, eager and
# compiled (images/s, MFU). Each step has its own time limit, cut to what is left of the
# whole run's, and a failing step does not stop the next; a summary of the targets is printed
# last.
#
#   benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   benchmarks/device_check.sh --smoke    # the same steps on the CPU, tiny, to check the script
#
# Environment: OUT (where results and the log go; default benchmarks/results/device-<time>),
# PYTHON (default: .venv/bin/python if there, else python3), BUDGET_S (the whole run's limit,
# default 480), LINK_PACKAGES=1 (import this checkout's packages through links in a temporary
# folder on PYTHONPATH, as is done anyway where they are not importable: a GPU image with its
# own torch, where nothing can be installed from an index). Files written under
# OUT: device_check.log, bench_losses.json, train-eager.json, train-compile.json,
# summary.txt (five files, for a device tool that returns only a few).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; elif [ "$#" -gt 0 ]; then
  echo "usage: $0 [--smoke]" >&2
  exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-benchmarks/results/device-$(date -u +%Y%m%dT%H%M%SZ)}"
BUDGET_S="${BUDGET_S:-480}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
START=$SECONDS
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, at most LIMIT_S seconds and no
# more than the whole run has left, its output to the terminal and the log
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt "$limit" ]; then limit="$left"; fi
  if [ "$limit" -le 5 ]; then
    say "== $name: skipped, the run's budget of ${BUDGET_S} s is spent"
    return
  fi
  say "== $name (limit ${limit} s): $*"
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name: rc $rc after $((SECONDS - began)) s"
}

if [ "${LINK_PACKAGES:-0}" = 1 ] || ! "$PYTHON" -c "import mixelbo, mixelbo_reference" 2>/dev/null
then  # a GPU image with its own torch: this checkout's two packages by links, nothing built
  SITE="$(mktemp -d)"
  ln -s "$ROOT/src/mixelbo" "$SITE/mixelbo"
  ln -s "$ROOT/reference_model" "$SITE/mixelbo_reference"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  say "== mixelbo and mixelbo_reference linked from this checkout into $SITE"
fi

say "== machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
    --format=csv 2>&1 || echo "(no nvidia-smi)"; } | tee -a "$LOG"
"$PYTHON" -c "import sys, torch, mixelbo; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| cuda', torch.version.cuda, '| device',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'none', '| mixelbo',
mixelbo.__file__)" 2>&1 | tee -a "$LOG"

# The test files that hold CUDA tests (collecting only these needs none of the packages that
# other tests import and a GPU image may lack).
mapfile -t CUDA_TESTS < <(grep -l "pytest.mark.cuda" tests/test_*.py)
if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  LOSS_ARGS=(--quick --sizes 8,16 --min-run-time 0.05)
  TRAIN_ARGS=(--config tiny-32 --device cpu --precision fp32 --warmup 1 --steps 2 --threads 2)
  TRAIN_COMPILE=()  # compiling a network on 2 CPU cores takes minutes: not in the smoke run
  TESTS_LIMIT=60
else
  DEVICE=cuda
  # (512, 4096): the issue's size (its 24 MB fit the H200's 60 MB L2); (16384, 4096): 256 MB
  # per tensor, so the bandwidth is HBM's, not the cache's
  LOSS_ARGS=(--dtypes fp32 bf16 --sizes 64,512 512,4096 16384,4096 --min-run-time 0.5)
  TRAIN_ARGS=(--config paper-256 --batch-size 64 --device cuda --precision bf16 --warmup 5
    --steps 20)
  TRAIN_COMPILE=(--compile)
  TESTS_LIMIT=120
fi

# pytest-xdist, where installed (the GPU image has it), spreads the tests' compiles over 4 workers
WORKERS=()
if "$PYTHON" -c "import xdist" 2>/dev/null; then WORKERS=(-n 4); fi
step "pytest -m cuda" "$TESTS_LIMIT" "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider \
  "${WORKERS[@]}" "${CUDA_TESTS[@]}"
# its first calls (fresh processes, cold compiles) come first, then the cases, each saved as
# it finishes (bench_losses.partial.json), so a run cut short keeps what it measured
step "bench_losses" 180 "$PYTHON" benchmarks/bench_losses.py --device "$DEVICE" \
  "${LOSS_ARGS[@]}" --out "$OUT/bench_losses.json"
step "bench_train, eager" 50 "$PYTHON" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" \
  --out "$OUT/train-eager.json"
if [ "${#TRAIN_COMPILE[@]}" -gt 0 ]; then
  step "bench_train, torch.compile" 150 "$PYTHON" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" \
    "${TRAIN_COMPILE[@]}" --out "$OUT/train-compile.json"
fi

"$PYTHON" benchmarks/device_summary.py "$OUT" 2>&1 | tee "$OUT/summary.txt" | tee -a "$LOG"
say "== done in $((SECONDS - START)) s; results in $OUT"
