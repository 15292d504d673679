#!/usr/bin/env bash
# The GPU path in one command (under 10 minutes on one GPU), printing one table:
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh            # on a machine with CUDA
#
# 1. bench_step.py and bench_loop.py with --device cuda (short budgets; full logs kept);
# 2. the smoke sweep with num_gpus 0.25 and replicas_per_task auto, every run on cuda;
# 3. the memory model (sobolev.memory.task_bytes) against torch.cuda.max_memory_allocated;
# 4. the study's GPU configuration (GPU_CHECK_STUDY_CONFIG, default configs/paper.yaml): one task of each
#    kind (L2 k=0, Sobolev, bias, frozen control) at its largest width, timed against the dry-run's GPU
#    model, with the memory model against the allocated peak, and an eigvalsh/eigh at its largest N.
#
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU, so that the script itself is known to work
# before a GPU is at hand: tests/test_concurrency.py does, with GPU_CHECK_CONFIG a tiny sweep and
# GPU_CHECK_QUICK=1 (the benchmarks only parse their arguments: CPU runs of them take minutes).
# GPU_CHECK_LOGS: where the full logs go (default: a new temporary directory). Exit 1 if a check failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
CONFIG=${GPU_CHECK_CONFIG:-configs/smoke.yaml}
STUDY_CONFIG=${GPU_CHECK_STUDY_CONFIG:-configs/paper.yaml}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d -t gpu_check.XXXXXX)}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-.}
mkdir -p "$LOGS"
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then  # the CPU test: the benchmarks only parse their arguments
  STEP_ARGS=(--budget 8 --rounds 5 --help); LOOP_ARGS=(--rounds 3 --help); LIMIT=120; STUDY_ARGS=(--quick)
else
  STEP_ARGS=(--budget 8 --rounds 5); LOOP_ARGS=(--rounds 3); LIMIT=150; STUDY_ARGS=()
fi
ROWS=()
FAILED=0

row() { ROWS+=("| $1 | $DEVICE | $2 | $3 |"); }

if [ "$DEVICE" = cuda ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine," \
         "or GPU_CHECK_DEVICE=cpu to check the script itself" >&2
    exit 2
  fi
  row "device" "$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')")" "-"
fi

bench() {  # name, script, args...
  local name=$1 script=$2; shift 2
  local t0=$SECONDS
  if timeout "$LIMIT" "$PY" "$script" --device "$DEVICE" "$@" >"$LOGS/$name.txt" 2>&1; then
    row "$name" "ok: $(grep -v '^\s*$' "$LOGS/$name.txt" | tail -1 | cut -c1-150)" "$((SECONDS - t0))"
  else
    row "$name" "FAILED (exit $?): $(tail -1 "$LOGS/$name.txt" | cut -c1-150)" "$((SECONDS - t0))"; FAILED=1
  fi
}

check() {  # name, gpu_check.py args...
  local name=$1; shift
  local t0=$SECONDS
  if timeout 240 "$PY" benchmarks/gpu_check.py "$@" --device "$DEVICE" >"$LOGS/$name.txt" 2>&1; then
    while IFS='|' read -r _ what result; do
      row "$what" "$result" "$((SECONDS - t0))"
      case $result in *FAILED*|*OFF*) FAILED=1 ;; esac
    done < <(grep '^ROW|' "$LOGS/$name.txt")
  else
    row "$name" "FAILED (exit $?): $(tail -1 "$LOGS/$name.txt" | cut -c1-150)" "$((SECONDS - t0))"; FAILED=1
  fi
}

START=$SECONDS
bench bench_step benchmarks/bench_step.py "${STEP_ARGS[@]}"
bench bench_loop benchmarks/bench_loop.py "${LOOP_ARGS[@]}"
check sweep sweep "$CONFIG"
check memory memory
check study study "$STUDY_CONFIG" "${STUDY_ARGS[@]}"

echo "| check | device | result | s |"
echo "|---|---|---|---:|"
printf '%s\n' "${ROWS[@]}"
echo "total $((SECONDS - START)) s; full logs in $LOGS"
exit $FAILED
