"""EDSR x4: B=32, F=256, res_scale 0.1; 43,089,923 parameters.

Paper recipe on DIV2K (800 training images, LR patch 48, batch 16, Adam 1e-4 halved
every 2e5 steps, L1 loss, flips + transpose):

  python -m edsr_jax.main --config=configs/edsr_x4.py --workdir=runs/edsr_x4 \
      --config.data.train_dir=/data/DIV2K --config.data.val_dir=/data/DIV2K

`/data/DIV2K` holds DIV2K_train_HR/, DIV2K_train_LR_bicubic/X4/, DIV2K_valid_HR/ and
DIV2K_valid_LR_bicubic/X4/ as unpacked from the official archives. Validation runs on
0801-0810 (RGB, border 4+6). Expected: the official release of this network reaches
29.25 dB on DIV2K 0801-0900 (RGB, border 4+6) after its full schedule.

The paper initialises x4 from a trained x2 network: add
`--config.init_from=runs/edsr_x2` (a workdir of configs/edsr_x2.py, or one of its
checkpoints) to copy every parameter but the upsampler from it; without it this
trains from scratch.

Quick smoke run on the built-in demo photos (a few steps, tiny batch):

  python -m edsr_jax.main --config=configs/edsr_x4.py:runlocal --workdir=/tmp/edsr_x4
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.model.name = "edsr"
  c.model.scale = 4
  c.model.num_blocks = 32
  c.model.num_features = 256
  c.model.res_scale = 0.1
  c.data.val_convention = "div2k"
  return config_lib.finalize(c, arg)
