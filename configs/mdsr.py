"""MDSR: one network for x2, x3 and x4 (Lim et al., CVPR 2017 workshops).

Shared head, body (B residual blocks) and tail; per-scale pre-process blocks (two 5x5
residual blocks) and upsamplers. Each step trains one scale drawn at random, with the
paper's recipe (as configs/edsr.py). `--config=configs/mdsr.py[:VARIANT]`, VARIANT a
comma list of `baseline` (B=16, F=64 instead of B=80, F=64) and `runlocal` (a smoke run
on the built-in demo photos).

Each variant's command, its parameters, and the expected result: what the official
release of the network reaches on DIV2K 0801-0900 (x2 / x3 / x4, RGB, border scale+6)
after its full schedule.

  python -m edsr_jax.main --config=configs/mdsr.py --workdir=runs/mdsr $DIV2K
      7,953,987 parameters; expected 34.92 / 31.22 / 29.24 dB
  python -m edsr_jax.main --config=configs/mdsr.py:baseline --workdir=runs/mdsr_baseline $DIV2K
      3,227,203 parameters; expected 34.63 / 30.94 / 28.97 dB

with DIV2K="--config.data.train_dir=/data/DIV2K --config.data.val_dir=/data/DIV2K". Smoke run:

  python -m edsr_jax.main --config=configs/mdsr.py:baseline,runlocal --workdir=/tmp/mdsr
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  _, words = config_lib.variant(arg, ("baseline",), scales=())
  c = config_lib.base_config()
  c.model.name = "mdsr"
  c.model.scales = (2, 3, 4)
  c.model.num_blocks = 16 if "baseline" in words else 80
  c.model.num_features = 64
  c.model.res_scale = 1.0
  c.data.val_convention = "div2k"
  return config_lib.runlocal(c) if "runlocal" in words else c
