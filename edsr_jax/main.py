"""Trains EDSR / MDSR.

  python -m edsr_jax.main --config=configs/edsr.py:x2,baseline --workdir=runs/x2 \
      --config.data.train_dir=/data/DIV2K --config.num_train_steps=1000

Any config value can be overridden with `--config.<key>=<value>`; re-running with the
same --workdir resumes from its latest checkpoint. Several hosts: on Cloud TPU run the
same command on every worker (JAX finds the others); in a Slurm job start one process per
GPU with `srun ... --cluster_detection=slurm` (launch/slurm.sh does); elsewhere add
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each process.
"""

import glob
import os

import jax
from absl import app, flags, logging

from edsr_jax import cli, config_lib, train

FLAGS = flags.FLAGS


# What JAX's Slurm detection reads (jax._src.clusters.slurm_cluster); srun sets them all.
SLURM_VARIABLES = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)


def initialize_distributed() -> None:
  """Connects the processes of a multi-host run; a single process needs nothing."""
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.cluster_detection == "slurm":
    if any(v is not None for v in explicit):
      raise app.UsageError(
        "--cluster_detection=slurm takes the processes from Slurm: drop --coordinator_address, "
        "--num_processes and --process_id"
      )
    missing = [v for v in SLURM_VARIABLES if v not in os.environ]
    if missing:
      raise app.UsageError(
        f"--cluster_detection=slurm: {', '.join(missing)} not set; start the processes with "
        "srun inside a Slurm job (launch/slurm.sh does)"
      )
    # JAX reads the coordinator (first node of the step, a port from the job id), the
    # process count and index, and gives each process the GPU of its SLURM_LOCALID.
    jax.distributed.initialize(cluster_detection_method="slurm")
  elif any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(*explicit)
  elif on_cloud_tpu_vm():
    jax.distributed.initialize()  # finds the slice's workers itself (VM metadata / GKE env)


def on_cloud_tpu_vm() -> bool:
  # TPU chips show up as /dev/accel* (v2-v4) or /dev/vfio/* (v5e and later); GKE sets the
  # worker list in the environment. On a single-host slice initialize() is harmless.
  return bool(
    os.environ.get("TPU_WORKER_HOSTNAMES")
    or glob.glob("/dev/accel[0-9]*")
    or glob.glob("/dev/vfio/[0-9]*")
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed()
  cli.start_jax()
  logging.info(
    "process %d of %d, %d local devices of %d",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  logging.info("config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _define_flags() -> None:
  cli.DEFINE_path("workdir", None, "Directory for checkpoints and TensorBoard logs.")
  config_lib.define_config_flag()
  flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-process runs outside Cloud TPU."
  )
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
  flags.DEFINE_enum(
    "cluster_detection",
    None,
    ["slurm"],
    "Connect the processes of a job through JAX's detection of this cluster manager "
    "(slurm: processes started by srun, one per GPU; see launch/slurm.sh).",
  )
  flags.mark_flags_as_required(["config", "workdir"])


def run() -> None:
  """`edsr-train` (a console script, pyproject.toml) = `python -m edsr_jax.main`."""
  _define_flags()
  cli.run(main, config_lib.check_config_args, start_jax_first=False)


if __name__ == "__main__":
  run()
