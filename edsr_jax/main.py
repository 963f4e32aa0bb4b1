"""Trains EDSR / MDSR.

  python -m edsr_jax.main --config=configs/edsr_baseline_x2.py --workdir=runs/x2 \
      --config.data.train_dir=/data/DIV2K --config.num_train_steps=1000

Any config value can be overridden with `--config.<key>=<value>`; re-running with the
same --workdir resumes from its latest checkpoint.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from edsr_jax import config_lib, image_io, logs, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard logs.")
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  logging.info("config:\n%s", FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_lib.ConfigError, image_io.ImageError) as e:
    sys.exit(f"error: {e}")  # a bad input, not a bug: the message says what to fix


if __name__ == "__main__":
  app.run(main)
