#!/usr/bin/env bash
# Train edsr_jax on a Slurm cluster: N nodes x G GPUs, one process per GPU started by srun.
# `launch/slurm.sh --help` lists the flags; launch/README.md explains the job.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "slurm.sh needs bash >= 4.4, this is $BASH_VERSION" >&2
  exit 1
fi

readonly EX_TEMPFAIL=75 # the trainer's status after saving on SIGTERM: run again to resume
readonly LHS_FLAG=--xla_gpu_enable_latency_hiding_scheduler=true

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh submit [FLAGS] [--dry-run] [-- EXTRA_TRAIN_ARGS...]

  submit   write a batch script into --log_dir and submit it with sbatch: --nodes nodes
           x --gpus_per_node GPUs, one training process per GPU (srun), connected by
           JAX's Slurm detection; the global batch is split over all the GPUs
             --nodes=N --gpus_per_node=G --config=configs/FILE.py --workdir=DIR
             [--time=1-00:00:00]     the job's time limit (sbatch --time)
             [--partition=P] [--account=A] [--job_name=edsr_jax]
             [--cpus_per_gpu=8]      CPU cores per process (input pipeline)
             [--signal_lead=180]     seconds before the time limit at which Slurm sends
                                     SIGTERM: the run saves, exits 75, and the job
                                     requeues itself and resumes
             [--log_dir=DIR]         batch and per-task logs (default: WORKDIR/slurm;
                                     needed when --workdir is gs://)
             [--tfds_data_dir=DIR]   read TFDS div2k from DIR
             [--latency_hiding]      add --xla_gpu_enable_latency_hiding_scheduler=true
             [--venv=DIR]            (default: .venv in the checkout, as made by
                                     launch/gpu.sh setup; on a filesystem every node sees)
             args after `--` go to edsr_jax.main as they are
           Relative paths, also those after `--`, are relative to the checkout, which
           every node must see at the same path. Status 75 (preempted or at the time
           limit, checkpoint saved) requeues the job; any other status ends it.
           More sbatch options: sbatch's SBATCH_* variables (e.g. SBATCH_QOS=high).

  --dry-run  print the commands and the batch script instead of running them
  --help     this message

Flags take --flag=value or --flag value; dashes and underscores are interchangeable.

Example (2 nodes x 8 GPUs, DIV2K unpacked in /shared/DIV2K):
  launch/gpu.sh setup      # once, on a node, into the shared checkout
  launch/slurm.sh submit --nodes=2 --gpus_per_node=8 --partition=gpu --time=12:00:00 \
      --config=configs/edsr.py:x2 --workdir=/shared/runs/edsr_x2 \
      -- --config.data.train_dir=/shared/DIV2K --config.data.val_dir=/shared/DIV2K
EOF
}

PROG=slurm.sh
# shellcheck source=launch/lib.sh disable=SC2034  # PROG is read by lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- flags
COMMAND=${1:-}
case $COMMAND in
  submit) shift ;;
  -h | --help | help) usage; exit 0 ;;
  "") usage_error "missing command" ;;
  *) usage_error "unknown command: $COMMAND" ;;
esac

ALLOWED[submit]="nodes gpus_per_node config workdir time partition account job_name \
cpus_per_gpu signal_lead log_dir tfds_data_dir venv"
SWITCHES[submit]="latency_hiding"
FLAG=(
  [time]=1-00:00:00
  [job_name]=edsr_jax
  [cpus_per_gpu]=8
  [signal_lead]=180
  [venv]=$REPO/.venv
)
parse_flags "$@"
require nodes gpus_per_node config workdir

# in_checkout PATH: PATH made absolute against the checkout (gs:// and /... stay).
in_checkout() {
  case $1 in
    /* | gs://*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$REPO" "$1" ;;
  esac
}

positive() { # NAME: the flag's value is a whole number > 0
  if ! [[ ${FLAG[$1]} =~ ^[0-9]+$ ]] || ((10#${FLAG[$1]} == 0)); then
    flag_error "--$1 must be a whole number > 0, not '${FLAG[$1]}'"
  fi
}
positive nodes
positive gpus_per_node
positive cpus_per_gpu
positive signal_lead

CONFIG=${FLAG[config]}
CONFIG_FILE=$(in_checkout "${CONFIG%%:*}")
[[ -f $CONFIG_FILE ]] || flag_error "--config: no file $CONFIG_FILE"
WORKDIR=$(in_checkout "${FLAG[workdir]}")
if [[ -n ${FLAG[log_dir]:-} ]]; then
  LOG_DIR=$(in_checkout "${FLAG[log_dir]}")
elif [[ $WORKDIR == gs://* ]]; then
  flag_error "--log_dir is needed with a gs:// --workdir (Slurm writes logs to a local path)"
else
  LOG_DIR=$WORKDIR/slurm
fi
[[ $LOG_DIR != gs://* ]] || flag_error "--log_dir must be a path on the cluster, not $LOG_DIR"
VENV=$(in_checkout "${FLAG[venv]}")
SCRIPT=$LOG_DIR/${FLAG[job_name]}.sbatch

# ---------------------------------------------------------------- the batch script
train_command() {
  local cmd=(
    "$VENV/bin/python" -m edsr_jax.main --config="$CONFIG" --workdir="$WORKDIR"
    --cluster_detection=slurm
  )
  if [[ -n ${FLAG[tfds_data_dir]:-} ]]; then
    cmd+=(--config.data.source=tfds --config.data.tfds_data_dir="${FLAG[tfds_data_dir]}")
  fi
  cmd+=("${EXTRA[@]}")
  if ((${SWITCH[latency_hiding]:-0})); then
    cmd=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }$LHS_FLAG" "${cmd[@]}")
  fi
  quote_words "${cmd[@]}"
}

batch_script() {
  local name=${FLAG[job_name]}
  cat <<EOF
#!/bin/bash
#SBATCH --job-name=$(quote "$name")
#SBATCH --nodes=${FLAG[nodes]}
#SBATCH --ntasks-per-node=${FLAG[gpus_per_node]}
#SBATCH --gpus-per-node=${FLAG[gpus_per_node]}
#SBATCH --cpus-per-task=${FLAG[cpus_per_gpu]}
#SBATCH --time=${FLAG[time]}
EOF
  if [[ -n ${FLAG[partition]:-} ]]; then echo "#SBATCH --partition=${FLAG[partition]}"; fi
  if [[ -n ${FLAG[account]:-} ]]; then echo "#SBATCH --account=${FLAG[account]}"; fi
  cat <<EOF
#SBATCH --signal=TERM@${FLAG[signal_lead]}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=$(quote "$LOG_DIR/%x-%j.out")
# Written by launch/slurm.sh. One process per GPU: JAX's Slurm detection gives each the
# GPU of its SLURM_LOCALID (every task sees the node's GPUs: no per-task GPU binding).
# --signal sends SIGTERM to the tasks ahead of the time limit; they save a checkpoint
# together and exit $EX_TEMPFAIL, and this script requeues the job, which resumes from it.
set -uo pipefail
cd $(quote "$REPO") || exit 1
echo "job \$SLURM_JOB_ID, restart \${SLURM_RESTART_COUNT:-0}, nodes \$SLURM_JOB_NODELIST"

# This shell's own SIGTERM (scancel, preemption) must not end it before the tasks have
# saved: note it and keep waiting for srun.
interrupted=0
trap 'interrupted=1; echo "SIGTERM: waiting for the training tasks to save" >&2' TERM
# --kill-on-bad-exit=0: a task that exits first (75 after saving) must not have srun
# kill the others while they finish writing.
srun --kill-on-bad-exit=0 --output=$(quote "$LOG_DIR/%x-%j-task%t.out") --open-mode=append \\
  $(train_command) &
task=\$!
while wait "\$task"; status=\$?; ((interrupted)); do interrupted=0; done

if ((status == $EX_TEMPFAIL)); then
  echo "training saved and stopped (status $EX_TEMPFAIL): requeueing job \$SLURM_JOB_ID"
  scontrol requeue "\$SLURM_JOB_ID" || echo "scontrol requeue failed: resubmit to resume" >&2
else
  echo "training ended with status \$status: not requeued"
fi
exit "\$status"
EOF
}

# ---------------------------------------------------------------- submit
run mkdir -p "$LOG_DIR"
if ((DRY_RUN)); then
  echo "cat > $(quote "$SCRIPT") <<'SBATCH'"
  batch_script
  echo "SBATCH"
else
  batch_script >"$SCRIPT"
  echo "+ wrote $SCRIPT" >&2
  [[ -x $VENV/bin/python ]] ||
    echo "${PROG}: warning: no $VENV/bin/python here (run launch/gpu.sh setup on a node)" >&2
fi
run sbatch "$SCRIPT"
if ((!DRY_RUN)); then
  echo "logs: $LOG_DIR/${FLAG[job_name]}-JOBID.out (job) and -JOBID-task<N>.out (each GPU)"
  echo "scancel JOBID stops it: the tasks get SIGTERM and save (within Slurm's KillWait)"
fi
