#!/usr/bin/env bash
# Train edsr_jax on a Cloud TPU VM (one host, or every worker of a multi-host slice) with
# gcloud. `launch/tpu.sh --help` lists the commands; launch/README.md walks through a run.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "tpu.sh needs bash >= 4.4, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 1
fi

readonly JAX_VERSION=0.10.2  # = the jax pin in requirements.txt
readonly PYTHON_VERSION=3.11
readonly UV_VERSION=0.13.9   # installs Python 3.11 and the venv on the workers (see README)
readonly REMOTE_DIR=edsr_jax # code and .venv, under $HOME on every worker
readonly LOG=edsr_train.log  # under $HOME on every worker
readonly PIDFILE=edsr_train.pid

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh COMMAND [FLAGS] [--dry-run] [-- EXTRA_TRAIN_ARGS...]

Commands (every one needs --name, --zone and --project):
  create   request the TPU as a queued resource (node id = --name)
             [--accelerator_type=v4-8] [--runtime_version=(from the type)]
             [--provisioning=on-demand|spot|reserved]  (default on-demand)
  setup    copy this checkout (tracked + untracked, not ignored files) to every worker,
           then on every worker: Python 3.11 venv in ~/edsr_jax/.venv (via uv) and
           pip install -r requirements.txt "jax[tpu]==0.10.2"
  check    compile the train step for --accelerator_type here, with the TPU compiler
           (python -m edsr_jax.aot; no TPU, no gcloud): HBM per chip, fits or not, FLOPs,
           estimated step time. Takes the same flags as train.
  train    start training in the background on every worker, log in ~/edsr_train.log
             --config=configs/FILE.py --workdir=gs://BUCKET/DIR --tfds_data_dir=gs://BUCKET/tfds
             --accelerator_type=v4-8 (the TPU's type: check runs first, here, and a config
             that does not fit is refused) or --skip_check
             args after `--` go to edsr_jax.main as they are (e.g. -- --config.batch_size=32)
           Re-running train with the same --workdir resumes from its latest checkpoint.
  logs     follow the training log of one worker  [--worker=0]
  stop     SIGTERM the training on every worker (it saves a checkpoint and exits)
  status   describe the queued resource (state ACTIVE, SUSPENDED after a spot preemption...)
  delete   delete the queued resource and its TPU VMs (checkpoints on gs:// stay)

  --dry-run  print the commands (one per line, shell-quoted) instead of running them
  --help     this message

Flags take --flag=value or --flag value; dashes and underscores are interchangeable.
Runtime versions by type: v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.

Example (a v4-8 spot TPU):
  launch/tpu.sh create --name=edsr --zone=us-central2-b --project=P --provisioning=spot
  launch/tpu.sh setup  --name=edsr --zone=us-central2-b --project=P
  launch/tpu.sh train  --name=edsr --zone=us-central2-b --project=P \
      --config=configs/edsr.py:x2,baseline --workdir=gs://B/runs/x2 --tfds_data_dir=gs://B/tfds
EOF
}

# A bad command line: exit 2. Unknown commands and flags also get the usage.
PROG=tpu.sh
# shellcheck source=launch/lib.sh disable=SC2034  # PROG is read by lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- flags
COMMAND=${1:-}
case $COMMAND in
  create | setup | check | train | logs | stop | status | delete) shift ;;
  -h | --help | help) usage; exit 0 ;;
  "") usage_error "missing command" ;;
  *) usage_error "unknown command: $COMMAND" ;;
esac

declare -A ALLOWED=(
  [create]="name zone project accelerator_type runtime_version provisioning"
  [setup]="name zone project"
  [check]="name zone project config workdir tfds_data_dir accelerator_type"
  [train]="name zone project config workdir tfds_data_dir accelerator_type"
  [logs]="name zone project worker"
  [stop]="name zone project"
  [status]="name zone project"
  [delete]="name zone project"
)
declare -A FLAG=(
  [provisioning]=on-demand
  [worker]=0
)
declare -A SWITCHES=(
  [train]="skip_check"
)
parse_flags "$@"

if [[ $COMMAND != check ]]; then require name zone project; fi
if ((${#EXTRA[@]})) && [[ $COMMAND != train && $COMMAND != check ]]; then
  flag_error "only 'train' and 'check' take arguments after --"
fi
NAME=${FLAG[name]:-}
WHERE=(--zone="${FLAG[zone]:-}" --project="${FLAG[project]:-}")

ssh_workers() { # WORKER REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

# ---------------------------------------------------------------- commands
default_runtime() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) flag_error "no default runtime version for accelerator type '$1': give --runtime_version" ;;
  esac
}

cmd_create() {
  local type=${FLAG[accelerator_type]:-v4-8} runtime=${FLAG[runtime_version]:-} tier=()
  [[ -n $runtime ]] || runtime=$(default_runtime "$type")
  case ${FLAG[provisioning]} in
    on-demand) ;;
    spot) tier=(--spot) ;;
    reserved) tier=(--reserved) ;;
    *) flag_error "--provisioning must be on-demand, spot or reserved, not '${FLAG[provisioning]}'" ;;
  esac
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" \
    "${WHERE[@]}" --accelerator-type="$type" --runtime-version="$runtime" "${tier[@]}"
}

cmd_setup() {
  TARBALL=${TMPDIR:-/tmp}/edsr_jax-$NAME.tar.gz  # global: the EXIT trap removes it
  local pack
  pack="git -C $(quote "$REPO") ls-files -z --cached --others --exclude-standard"
  pack+=" | tar -C $(quote "$REPO") --null --files-from=- -czf $(quote "$TARBALL")"
  # POSIX sh on each worker. The code is replaced, an existing .venv is kept and updated.
  local remote=(
    "set -eu;"
    "mkdir -p ~/$REMOTE_DIR;"
    "find ~/$REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +;"
    "tar -xzf ~/$REMOTE_DIR.tar.gz -C ~/$REMOTE_DIR;"
    "rm ~/$REMOTE_DIR.tar.gz;"
    "cd ~/$REMOTE_DIR;"
    "export PATH=\"\$HOME/.local/bin:\$PATH\";"
    "command -v uv >/dev/null ||"
    "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --quiet uv==$UV_VERSION;"
    "[ -x .venv/bin/python ] || uv venv --seed --python $PYTHON_VERSION .venv;"
    "uv pip install --python .venv/bin/python -r requirements.txt \"jax[tpu]==$JAX_VERSION\";"
    ".venv/bin/python -c \"import jax, libtpu; print(jax.__version__, libtpu.__file__)\""
  )
  if ((DRY_RUN)); then
    echo "$pack"
  else
    git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 ||
      { echo "tpu.sh: setup packs the git checkout, and $REPO is not one" >&2; exit 1; }
    trap 'rm -f "$TARBALL"' EXIT
    echo "+ $pack" >&2
    bash -c "set -o pipefail; $pack"
  fi
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:$REMOTE_DIR.tar.gz" "${WHERE[@]}" \
    --worker=all
  ssh_workers all "${remote[*]}"
}

# The train step compiled here for the TPU type (edsr_jax.aot, TPU compiler from libtpu):
# the --config.* overrides after `--` apply; the data flags do not matter to it.
cmd_check() {
  require config accelerator_type
  local config=${FLAG[config]} python=${EDSR_JAX_PYTHON:-$REPO/.venv/bin/python} arg
  [[ -x $python ]] || python=python3
  local aot=("$python" -m edsr_jax.aot --tpu="${FLAG[accelerator_type]}" --config="$config"
    --noinference)
  for arg in "${EXTRA[@]}"; do
    [[ $arg == --config.* || $arg == --config=* ]] && aot+=("$arg")
  done
  if ((DRY_RUN)); then
    quote_words "${aot[@]}"
    echo
    return
  fi
  echo "+ $(quote_words "${aot[@]}")" >&2
  (cd "$REPO" && "${aot[@]}") || {
    echo "tpu.sh: the train step does not compile or fit on ${FLAG[accelerator_type]} (above);" \
      "nothing was started. --skip_check starts it anyway." >&2
    exit 1
  }
}

# True on a worker where the training started by `train` is still running.
readonly RUNNING="[ -f ~/$PIDFILE ] && kill -0 \"\$(cat ~/$PIDFILE)\" 2>/dev/null"

cmd_train() {
  require config workdir tfds_data_dir
  local config=${FLAG[config]} workdir=${FLAG[workdir]}
  [[ $workdir == gs://* ]] || flag_error "--workdir must be a gs:// path (all workers" \
    "share it, and a TPU VM's disk is lost when it is deleted or preempted), not '$workdir'"
  [[ $config != /* && -f $REPO/${config%%:*} ]] ||
    flag_error "--config: no file ${config%%:*} in $REPO (give the path inside the checkout)"
  if ((!${SWITCH[skip_check]:-0})); then
    [[ -n ${FLAG[accelerator_type]:-} ]] || flag_error "--accelerator_type is required for" \
      "'train' (the TPU's type, e.g. v4-8: the step is compiled for it first), or --skip_check"
    cmd_check
  fi
  local train=(
    .venv/bin/python -m edsr_jax.main --config="$config" --workdir="$workdir"
    --config.data.source=tfds --config.data.tfds_data_dir="${FLAG[tfds_data_dir]}"
    "${EXTRA[@]}"
  )
  local line
  line=$(quote_words "${train[@]}")
  local remote=(
    "set -eu;"
    "cd ~/$REMOTE_DIR;"
    "if $RUNNING; then"
    "echo \"\$(hostname): training is already running (pid \$(cat ~/$PIDFILE))\" >&2;"
    "exit 1; fi;"
    "echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) \$(hostname): launch/tpu.sh train\" >> ~/$LOG;"
    "PYTHONUNBUFFERED=1 setsid nohup $line >> ~/$LOG 2>&1 < /dev/null &"
    "echo \$! > ~/$PIDFILE;"
    "echo \"\$(hostname): training started, pid \$(cat ~/$PIDFILE), log ~/$LOG\""
  )
  ssh_workers all "${remote[*]}"
}

cmd_logs() {
  [[ ${FLAG[worker]} =~ ^[0-9]+$ ]] || flag_error "--worker must be a worker number, not '${FLAG[worker]}'"
  ssh_workers "${FLAG[worker]}" "tail -n 200 -F ~/$LOG"
}

cmd_stop() {
  local remote=(
    "if $RUNNING; then"
    "pid=\$(cat ~/$PIDFILE); kill -TERM \"\$pid\";"
    "echo \"\$(hostname): sent SIGTERM to \$pid, waiting for it to save and exit\";"
    "i=0; while kill -0 \"\$pid\" 2>/dev/null && [ \$i -lt 600 ]; do sleep 1; i=\$((i+1)); done;"
    "if kill -0 \"\$pid\" 2>/dev/null; then echo \"\$(hostname): \$pid still running\"; exit 1; fi;"
    "echo \"\$(hostname): stopped\";"
    "else echo \"\$(hostname): no training running\"; fi"
  )
  ssh_workers all "${remote[*]}"
}

cmd_status() {
  run gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}"
}

cmd_delete() {
  # --force deletes the TPU VMs first; --quiet skips gcloud's confirmation prompt.
  run gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
}

"cmd_$COMMAND"
