"""MDSR baseline: one network for x2, x3 and x4; B=16, F=64; 3,227,203 parameters.

Shared head, body (B residual blocks) and tail; per-scale pre-process blocks (two 5x5
residual blocks) and upsamplers. Each step trains one scale drawn at random.

  python -m edsr_jax.main --config=configs/mdsr_baseline.py --workdir=runs/mdsr_baseline \
      --config.data.train_dir=/data/DIV2K --config.data.val_dir=/data/DIV2K

Expected: the official release of this network reaches 34.63 / 30.94 / 28.97
dB (x2 / x3 / x4) on DIV2K 0801-0900 (RGB, border scale+6) after its full schedule.

Quick smoke run on the built-in demo photos:

  python -m edsr_jax.main --config=configs/mdsr_baseline.py:runlocal --workdir=/tmp/mdsr_baseline
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.model.name = "mdsr"
  c.model.scales = (2, 3, 4)
  c.model.num_blocks = 16
  c.model.num_features = 64
  c.model.res_scale = 1.0
  c.data.val_convention = "div2k"
  return config_lib.finalize(c, arg)
