"""EDSR baseline x3: B=16, F=64, res_scale 1.0; 1,554,499 parameters.

Paper recipe on DIV2K (800 training images, LR patch 48, batch 16, Adam 1e-4 halved
every 2e5 steps, L1 loss, flips + transpose):

  python -m edsr_jax.main --config=configs/edsr_baseline_x3.py --workdir=runs/edsr_baseline_x3 \
      --config.data.train_dir=/data/DIV2K --config.data.val_dir=/data/DIV2K

`/data/DIV2K` holds DIV2K_train_HR/, DIV2K_train_LR_bicubic/X3/, DIV2K_valid_HR/ and
DIV2K_valid_LR_bicubic/X3/ as unpacked from the official archives. Validation runs on
0801-0810 (RGB, border 3+6). Expected: the official release of this network reaches
30.92 dB on DIV2K 0801-0900 (RGB, border 3+6) after its full schedule.

The paper initialises x3 from a trained x2 network: add
`--config.init_from=runs/edsr_baseline_x2` (a workdir of configs/edsr_baseline_x2.py, or one of its
checkpoints) to copy every parameter but the upsampler from it; without it this
trains from scratch.

Quick smoke run on the built-in demo photos (a few steps, tiny batch):

  python -m edsr_jax.main --config=configs/edsr_baseline_x3.py:runlocal \
      --workdir=/tmp/edsr_baseline_x3
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.model.name = "edsr"
  c.model.scale = 3
  c.model.num_blocks = 16
  c.model.num_features = 64
  c.model.res_scale = 1.0
  c.data.val_convention = "div2k"
  return config_lib.finalize(c, arg)
