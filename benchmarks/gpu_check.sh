#!/usr/bin/env bash
# One short check of edsr_jax on a lent GPU machine (one H100 / H200, no network, its own
# python3 with JAX and PyTorch, no TensorFlow): exactness on the device, train and
# inference speed against PyTorch, and a short real training scored on Set5 / Set14 /
# B100. `benchmarks/gpu_check.sh --help` lists the modes; benchmarks/README.md, "GPU
# check", says what each part measures.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "gpu_check.sh needs bash >= 4.4, this is $BASH_VERSION" >&2
  exit 1
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly HELPER=$REPO/benchmarks/gpu_check_helpers.py
readonly CARRY=$REPO/.gpu_check # what --prepare makes; the device call carries it
readonly LIMIT_MIB=60           # the device call copies at most 64 MiB (tree + carried)
readonly SITE=/tmp/site         # where the carried wheels are installed on the GPU machine
# Carried at their requirements.lock pins, with what they need that the GPU image lacks
# (gpu_check_helpers.py wheels reads their Requires-Dist). chex is not in our lock.
readonly CARRIED=(ml_collections flax optax orbax-checkpoint)
# Published x2 VDSR scores and our CPU preset are in gpu_check_helpers.py (summary).

usage() {
  cat <<'EOF'
Usage: benchmarks/gpu_check.sh [--prepare | --smoke]

  --prepare  here, on the development machine (network to PyPI, the shared data): downloads
             the wheels the GPU image lacks into .gpu_check/wheels/ and copies the data the
             run needs into .gpu_check/data/ (the 291 training images; Set5, Set14, B100
             HR + x2 LR), shrunk losslessly and verified, then prints the size of what the
             device call copies and the call to make.
  (none)     on the GPU machine, from the repository root, with .gpu_check carried:
             installs the wheels to /tmp/site, then runs the sections (machine, checks,
             throughput, inference, train, evaluate), each with its own time limit, the
             whole within GPU_CHECK_BUDGET_S (default 480) seconds. Results go to
             ${OUT:-./gpu_check_out}: summary.md, results.json, gpu_check.log and the
             training's TensorBoard events; the summary is also printed at the end.
  --smoke    the same sections on the CPU in about a minute: the repository's .venv python,
             tiny networks, generated data, TensorFlow made unimportable (as on the GPU
             image). tests/test_gpu_check.py runs it.

Exit status: 0 when every section passed, 1 when one did not (the others still ran),
2 for a bad command line or a missing --prepare.
Environment: OUT (results folder), PYTHON (interpreter; default python3 on the GPU
machine, .venv/bin/python for --prepare and --smoke), EDSR_SHARED_DATA (--prepare's
source, default ../shared/data), GPU_CHECK_BUDGET_S, GPU_CHECK_TRAIN_MAX_S (default 180),
GPU_CHECK_TRAIN_ARGS (extra flags for edsr_jax.main, split on spaces).
EOF
}

die() {
  echo "gpu_check.sh: $*" >&2
  exit 2
}

MODE=gpu
(($# <= 1)) || die "one argument at most (see --help)"
case ${1:-} in
  "") ;;
  --prepare) MODE=prepare ;;
  --smoke) MODE=smoke ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    die "unknown argument: $1"
    ;;
esac

# Bytes of the files under a folder.
bytes_of() {
  find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'
}

mib() {
  awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'
}

# ---------------------------------------------------------------- --prepare

prepare() {
  local py=${PYTHON:-$REPO/.venv/bin/python}
  local shared=${EDSR_SHARED_DATA:-$REPO/../shared/data}
  [[ -x $py ]] || die "no $py: make the venv first (make venv), or set PYTHON"
  [[ -d $shared/train/T91 && -d $shared/benchmark/Set5 ]] ||
    die "no shared data in $shared (train/T91, benchmark/Set5): set EDSR_SHARED_DATA"
  mkdir -p "$CARRY"
  echo "Wheels for the GPU image (Python 3.12, x86-64), pins from requirements.lock:"
  "$py" "$HELPER" wheels --lock "$REPO/requirements.lock" --dest "$CARRY/wheels" "${CARRIED[@]}"
  local tree wheels data total limit=$((LIMIT_MIB * 1048576))
  tree=$("$py" "$HELPER" tree-size --repo "$REPO")
  wheels=$(bytes_of "$CARRY/wheels")
  echo "Data from $shared:"
  "$py" "$HELPER" stage-data --src "$shared" --dst "$CARRY/data" \
    --budget $((limit - tree - wheels))
  data=$(bytes_of "$CARRY/data")
  total=$((tree + wheels + data))
  echo
  echo "What the device call copies:"
  echo "  working tree (tracked + untracked, not ignored)  $(mib "$tree")"
  echo "  .gpu_check/wheels                                $(mib "$wheels")"
  echo "  .gpu_check/data                                  $(mib "$data")"
  echo "  total                                            $(mib "$total") (limit $LIMIT_MIB MiB)"
  if ((total > limit)); then
    echo "gpu_check.sh: over $LIMIT_MIB MiB: the device call would refuse it" >&2
    exit 1
  fi
  cat <<'EOF'

Ready. The device call (the script ends within GPU_CHECK_BUDGET_S=480 s plus a few seconds;
results in $OUT):
  run(command="benchmarks/gpu_check.sh", carry=[".gpu_check"], timeout_s=600)
EOF
}

# ---------------------------------------------------------------- sections

# record NAME STATUS SECONDS LIMIT NOTE: one line of sections.tsv.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/sections.tsv"
}

# section NAME LIMIT COMMAND...: runs COMMAND with a time limit (cut to what the budget
# leaves after RESERVE seconds for later sections), its output in logs/NAME.log; records
# PASS, FAIL, TIMEOUT or SKIPPED, and the script goes on either way.
section() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS - RESERVE))
  ((limit <= left)) || limit=$left
  SECTIONS+=("$name")
  if ((limit < 5)); then
    record "$name" SKIPPED 0 "$limit" "no time left in the ${BUDGET} s budget"
    echo "== $name: SKIPPED (no time left)"
    return 0
  fi
  printf '== %-24s limit %3d s ... ' "$name" "$limit"
  local start=$SECONDS rc=0 status=PASS note=""
  # timeout signals its whole process group: the benchmarks' child processes too.
  timeout --kill-after=20 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null || rc=$?
  case $rc in
    0) ;;
    124 | 137)
      status=TIMEOUT
      note="cut at $limit s"
      ;;
    *)
      status=FAIL
      note="exit $rc: $(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-200)"
      ;;
  esac
  record "$name" "$status" "$((SECONDS - start))" "$limit" "$note"
  echo "$status in $((SECONDS - start)) s"
}

run_checks() {
  local start=$SECONDS
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  local out=${OUT:-$REPO/gpu_check_out}
  local r=$WORK/results
  mkdir -p "$out" "$WORK/logs" "$r"
  printf 'section\tstatus\tseconds\tlimit\tnote\n' >"$WORK/sections.tsv"
  SECTIONS=()
  export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

  local py data train_max eval_reserve
  local -a check_args train_args tp_runs inf_runs
  if [[ $MODE == smoke ]]; then
    py=${PYTHON:-$REPO/.venv/bin/python}
    [[ -x $py ]] || die "no $py: make the venv first (make venv), or set PYTHON"
    BUDGET=${GPU_CHECK_BUDGET_S:-300}
    train_max=${GPU_CHECK_TRAIN_MAX_S:-60}
    eval_reserve=40
    data=$WORK/data
    # TensorFlow unimportable, as on the GPU image: packages that raise ImportError first
    # on the path (CLU's writers import TensorFlow; tensorboard falls back to its stub).
    local block=$WORK/no_tensorflow m
    for m in tensorflow tensorflow_datasets; do
      mkdir -p "$block/$m"
      printf 'raise ModuleNotFoundError("No module named %s (blocked by gpu_check.sh --smoke)", name="%s")\n' \
        "'$m'" "$m" >"$block/$m/__init__.py"
    done
    export PYTHONPATH=$REPO:$block JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
    # Compiled programs shared by the processes (the second determinism run, the tools):
    # on a CPU they are the same with or without the cache.
    export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/xla_cache}
    check_args=(--network=2x8 --batch=4 --patch=12 --steps=3 --rate_steps=0 --sequential
      --tiled_x2 45 37 7 --tiled_x4 0 0 0)
    train_args=(--config.model.num_blocks=2 --config.model.num_features=8
      --config.patch_size=16 --config.batch_size=4 --config.num_train_steps=100000
      --config.lr_decay_steps=100000 --config.eval_every_steps=5
      --config.checkpoint_every_steps=5 --config.log_every_steps=5
      --config.num_image_summaries=1)
    tp_runs=("tiny 60 --smoke --dtypes=float32 --device=cpu")
    inf_runs=("40x33x2 60 --smoke --sizes=40x33x2 --tile_size=0 --device=cpu")
  else
    py=${PYTHON:-python3}
    BUDGET=${GPU_CHECK_BUDGET_S:-480}
    train_max=${GPU_CHECK_TRAIN_MAX_S:-180}
    eval_reserve=75
    data=$CARRY/data
    compgen -G "$CARRY/wheels/*.whl" >/dev/null ||
      die "no wheels in $CARRY/wheels: run benchmarks/gpu_check.sh --prepare first, carry .gpu_check"
    [[ -d $data/train/T91 ]] || die "no $data: run --prepare first and carry .gpu_check"
    export PYTHONPATH=$SITE:$REPO
    check_args=(--network=16x64 --batch=16 --patch=32 --steps=10 --rate_steps=300)
    train_args=()
    # name, time limit, flags; each its own process tree (cut short, a run keeps its rows).
    tp_runs=("baseline 80 --networks=baseline --batch_sizes=16,64 --steps=100"
      "full 110 --networks=full --batch_sizes=16,64 --steps=20")
    inf_runs=("510x339x4 45 --sizes=510x339x4 --tile_size=0"
      "1920x1080x2 60 --sizes=1920x1080x2 --tile_size=0")
  fi
  DEADLINE=$((start + BUDGET))
  # Until training, keep time for it (at least 90 s) and for the evaluation.
  RESERVE=$((90 + eval_reserve))
  echo "gpu_check ($MODE): budget $BUDGET s; $py; work in $WORK; results to $out"

  cd "$REPO"
  if [[ $MODE == smoke ]]; then
    section data 60 "$py" "$HELPER" smoke-data --dir "$WORK"
    section setup 90 "$py" "$HELPER" imports --json "$r/imports.json" --label "venv"
  else
    section setup 150 "$py" "$HELPER" install --wheels "$CARRY/wheels" --site "$SITE" \
      --json "$r/imports.json"
  fi
  # No preallocation: it only asks JAX and PyTorch what they see.
  section machine 60 env XLA_PYTHON_CLIENT_PREALLOCATE=false \
    "$py" "$HELPER" machine --json "$r/machine.json"
  section checks 100 "$py" "$HELPER" checks --json "$r/checks.json" "${check_args[@]}"

  local run name limit peak flags_text
  local -a flags
  for run in "${tp_runs[@]}"; do
    read -r name limit flags_text <<<"$run"
    read -r -a flags <<<"$flags_text"
    section "throughput_$name" "$limit" "$py" benchmarks/train_throughput.py "${flags[@]}" \
      --json "$r/throughput_$name.json"
  done
  peak=$("$py" "$HELPER" peak float32 "$r/machine.json" 2>/dev/null || true)
  for run in "${inf_runs[@]}"; do
    read -r name limit flags_text <<<"$run"
    read -r -a flags <<<"$flags_text"
    section "inference_$name" "$limit" "$py" benchmarks/inference.py "${flags[@]}" \
      ${peak:+--peak_tflops="$peak"} --json "$r/inference_$name.json"
  done

  # Training: the EDSR baseline (16 blocks x 64 features) with configs/edsr_291.py's x2
  # recipe on the 291 images, for what the budget leaves; SIGTERM makes the trainer save
  # a checkpoint and exit 75 (the evaluation then scores that checkpoint).
  local train_s=$((DEADLINE - SECONDS - eval_reserve))
  ((train_s <= train_max + 30)) || train_s=$((train_max + 30))
  RESERVE=$eval_reserve
  local -a plan extra stop=()
  if [[ $MODE == smoke ]]; then
    plan=()
    stop=(--stop_at_checkpoint=10) # SIGTERM once checkpoint 10 exists: the 75 path
  else
    mapfile -t plan < <("$py" "$HELPER" train-plan --checks "$r/checks.json" \
      --json "$r/train_plan.json" --budget $((train_s - 30)) 2>>"$WORK/logs/train.plan.log" || true)
  fi
  read -r -a extra <<<"${GPU_CHECK_TRAIN_ARGS:-}"
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/xla_cache}
  section train "$train_s" "$py" "$HELPER" train-run --workdir "$WORK/train" \
    --json "$r/train_run.json" --budget $((train_s - 30)) "${stop[@]}" -- \
    "$py" -m edsr_jax.main --config=configs/edsr_291.py:x2 --workdir="$WORK/train" \
    --config.model.num_features=64 \
    --config.data.train_dir="$data/train/T91,$data/train/BSD200" \
    --config.data.val_dir="$data/benchmark/Set5" "${plan[@]}" "${train_args[@]}" "${extra[@]}"

  RESERVE=0
  local sets=() set
  for set in Set5 Set14 B100; do
    [[ ! -d $data/benchmark/$set ]] || sets+=("$set")
  done
  section evaluate 600 "$py" -m edsr_jax.evaluate --checkpoint="$WORK/train" \
    --benchmark_dir="$data/benchmark" --datasets="$(IFS=,; echo "${sets[*]}")" --scales=2 \
    --output_json="$r/evaluate.json"

  # Results: at most 8 files come back from the device call.
  local wall=$((SECONDS - start)) log=$out/gpu_check.log
  : >"$log"
  for name in "${SECTIONS[@]}"; do
    [[ -f $WORK/logs/$name.log ]] || continue
    printf '\n===== %s =====\n' "$name" >>"$log"
    tail -c 1500000 "$WORK/logs/$name.log" >>"$log" # each file that comes back: <= 16 MiB
  done
  local events
  events=$(find "$WORK/train" -maxdepth 1 -name 'events.out.tfevents.*' 2>/dev/null | head -n 1)
  [[ -z $events ]] || cp "$events" "$out/train_events.tfevents"
  echo
  "$py" "$HELPER" summary --work "$WORK" --out "$out" --mode "$MODE" --wall "$wall" ||
    echo "gpu_check.sh: writing the summary failed (see $log)"
  echo
  echo "Files in $out: $(find "$out" -maxdepth 1 -type f -printf '%f ' | sort)"
  if grep -qvP '^[^\t]*\tPASS\t' <(tail -n +2 "$WORK/sections.tsv"); then
    echo "gpu_check.sh: not every section passed (see the table above)"
    exit 1
  fi
}

if [[ $MODE == prepare ]]; then
  prepare
else
  run_checks
fi
