#!/usr/bin/env bash
# Train edsr_jax on this machine's GPUs (one host, any number of GPUs: the batch is split
# over all of them). `launch/gpu.sh --help` lists the commands; see launch/README.md.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "gpu.sh needs bash >= 4.4, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 1
fi

readonly JAX_VERSION=0.10.2  # = the jax pin in requirements.txt
readonly PYTHON_VERSION=3.11
readonly UV_VERSION=0.13.9   # installs Python 3.11 and the venv when missing
readonly LHS_FLAG=--xla_gpu_enable_latency_hiding_scheduler=true

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh COMMAND [FLAGS] [--dry-run] [-- EXTRA_TRAIN_ARGS...]

Commands:
  setup    Python 3.11 venv (via uv, installed with pip --user when missing), then
           pip install -r requirements.txt "jax[cuda12]==0.10.2", then check that JAX
           sees the GPUs
             [--cuda=12|13]  jax[cuda12] needs an NVIDIA driver >= 525,
                             jax[cuda13] one >= 580 (CUDA itself comes from pip wheels)
  train    run edsr_jax.main in the foreground on all local GPUs, from the checkout
           (relative paths, also those after `--`, are relative to the checkout)
             --config=configs/FILE.py --workdir=DIR (local path or gs://)
             [--tfds_data_dir=DIR]   read TFDS div2k from DIR (else give the data
                                     with e.g. -- --config.data.train_dir=/data/DIV2K)
             [--latency_hiding]      add --xla_gpu_enable_latency_hiding_scheduler=true
                                     to XLA_FLAGS (overlaps the gradient all-reduce with
                                     the backward pass; see launch/README.md)
             args after `--` go to edsr_jax.main as they are
           Re-running train with the same --workdir resumes from its latest checkpoint;
           SIGTERM (kill PID) makes it save a checkpoint and exit.
Both take [--venv=DIR] (default: .venv in the checkout).

  --dry-run  print the commands (one per line, shell-quoted) instead of running them
  --help     this message

Flags take --flag=value or --flag value; dashes and underscores are interchangeable.

Example (8 GPUs, DIV2K unpacked in /data/DIV2K):
  launch/gpu.sh setup
  launch/gpu.sh train --config=configs/edsr.py:x2 --workdir=runs/edsr_x2 --latency_hiding \
      -- --config.data.train_dir=/data/DIV2K --config.data.val_dir=/data/DIV2K
EOF
}

# A bad command line: exit 2. Unknown commands and flags also get the usage.
PROG=gpu.sh
# shellcheck source=launch/lib.sh disable=SC2034  # PROG is read by lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- flags
COMMAND=${1:-}
case $COMMAND in
  setup | train) shift ;;
  -h | --help | help) usage; exit 0 ;;
  "") usage_error "missing command" ;;
  *) usage_error "unknown command: $COMMAND" ;;
esac

declare -A ALLOWED=(
  [setup]="cuda venv"
  [train]="config workdir tfds_data_dir venv"
)
declare -A FLAG=(
  [cuda]=12
  [venv]=$REPO/.venv
)
declare -A SWITCHES=(
  [train]="latency_hiding"
)
parse_flags "$@"

if ((${#EXTRA[@]})) && [[ $COMMAND != train ]]; then
  flag_error "only 'train' takes arguments after --"
fi
VENV=${FLAG[venv]}
[[ $VENV == /* ]] || VENV=$PWD/$VENV

# ---------------------------------------------------------------- commands
cmd_setup() {
  case ${FLAG[cuda]} in
    12 | 13) ;;
    *) flag_error "--cuda must be 12 or 13, not '${FLAG[cuda]}'" ;;
  esac
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v uv >/dev/null; then
    run env PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --quiet "uv==$UV_VERSION"
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    run uv venv --seed --python "$PYTHON_VERSION" "$VENV"
  fi
  run uv pip install --python "$VENV/bin/python" -r "$REPO/requirements.txt" \
    "jax[cuda${FLAG[cuda]}]==$JAX_VERSION"
  run "$VENV/bin/python" -c "import jax; d = jax.devices(); print(d); \
assert d[0].platform == \"gpu\", \"JAX sees no GPU: check nvidia-smi and the driver\""
}

cmd_train() {
  require config workdir
  local config=${FLAG[config]}
  local file=${config%%:*}
  [[ $file == /* ]] || file=$REPO/$file
  [[ -f $file ]] || flag_error "--config: no file $file"
  local cmd=(
    "$VENV/bin/python" -m edsr_jax.main --config="$config" --workdir="${FLAG[workdir]}"
  )
  if [[ -n ${FLAG[tfds_data_dir]:-} ]]; then
    cmd+=(--config.data.source=tfds --config.data.tfds_data_dir="${FLAG[tfds_data_dir]}")
  fi
  cmd+=("${EXTRA[@]}")
  if ((${SWITCH[latency_hiding]:-0})); then
    cmd=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }$LHS_FLAG" "${cmd[@]}")
  fi
  run cd "$REPO"
  if ((DRY_RUN)); then
    run "${cmd[@]}"
  else
    echo "+ $(quote_words "${cmd[@]}")" >&2
    exec "${cmd[@]}"  # python gets the signals itself: SIGTERM saves and exits
  fi
}

"cmd_$COMMAND"
