"""MDSR: one network for x2, x3 and x4; B=80, F=64; 7,953,987 parameters.

Shared head, body (B residual blocks) and tail; per-scale pre-process blocks (two 5x5
residual blocks) and upsamplers. Each step trains one scale drawn at random.

  python -m edsr_jax.main --config=configs/mdsr.py --workdir=runs/mdsr \
      --config.data.train_dir=/data/DIV2K --config.data.val_dir=/data/DIV2K

Expected: the official release of this network reaches 34.92 / 31.22 / 29.24
dB (x2 / x3 / x4) on DIV2K 0801-0900 (RGB, border scale+6) after its full schedule.

Quick smoke run on the built-in demo photos:

  python -m edsr_jax.main --config=configs/mdsr.py:runlocal --workdir=/tmp/mdsr
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.model.name = "mdsr"
  c.model.scales = (2, 3, 4)
  c.model.num_blocks = 80
  c.model.num_features = 64
  c.model.res_scale = 1.0
  c.data.val_convention = "div2k"
  return config_lib.finalize(c, arg)
