"""EDSR on DIV2K: the paper's networks and recipe (Lim et al., CVPR 2017 workshops).

`--config=configs/edsr.py:VARIANT`, VARIANT a comma list of a scale `x2` (default), `x3`
or `x4`; `baseline` for EDSR baseline (B=16, F=64, res_scale 1.0) instead of EDSR (B=32,
F=256, res_scale 0.1); `runlocal` for a smoke run of a few steps on the built-in demo
photos. Every variant trains with the paper's recipe: 800 DIV2K images, LR patch 48,
batch 16, Adam 1e-4 halved every 2e5 steps, L1 loss, flips + transpose. `/data/DIV2K`
holds DIV2K_train_HR/, DIV2K_train_LR_bicubic/X<s>/, DIV2K_valid_HR/ and
DIV2K_valid_LR_bicubic/X<s>/ as unpacked; validation runs on 0801-0810.

Each variant's command (DIV2K="--config.data.train_dir=/data/DIV2K
--config.data.val_dir=/data/DIV2K"), its parameters, and the expected result: what the
official release of the network reaches on DIV2K 0801-0900 (RGB, border scale+6) after
its full schedule.

  python -m edsr_jax.main --config=configs/edsr.py:x2,baseline --workdir=runs/baseline_x2 $DIV2K
      1,369,859 parameters; expected 34.61 dB
  python -m edsr_jax.main --config=configs/edsr.py:x3,baseline --workdir=runs/baseline_x3 $DIV2K
      1,554,499 parameters; expected 30.92 dB
  python -m edsr_jax.main --config=configs/edsr.py:x4,baseline --workdir=runs/baseline_x4 $DIV2K
      1,517,571 parameters; expected 28.95 dB
  python -m edsr_jax.main --config=configs/edsr.py:x2 --workdir=runs/edsr_x2 $DIV2K
      40,729,603 parameters; expected 35.03 dB
  python -m edsr_jax.main --config=configs/edsr.py:x3 --workdir=runs/edsr_x3 $DIV2K
      43,680,003 parameters; expected 31.26 dB
  python -m edsr_jax.main --config=configs/edsr.py:x4 --workdir=runs/edsr_x4 $DIV2K
      43,089,923 parameters; expected 29.25 dB

The paper starts x3 and x4 from the trained x2 network: add
`--config.init_from=runs/edsr_x2` (a workdir of the same network at x2) to copy every
parameter but the upsampler from it; without it they train from scratch.

A smoke run of any variant (a few steps on the demo photos; no data needed):

  python -m edsr_jax.main --config=configs/edsr.py:x2,baseline,runlocal --workdir=/tmp/edsr
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  scale, words = config_lib.variant(arg, ("baseline",))
  c = config_lib.base_config()
  c.model.name = "edsr"
  c.model.scales = (scale,)
  if "baseline" in words:
    c.model.num_blocks, c.model.num_features, c.model.res_scale = 16, 64, 1.0
  else:
    c.model.num_blocks, c.model.num_features, c.model.res_scale = 32, 256, 0.1
  c.data.val_convention = "div2k"
  return config_lib.runlocal(c) if "runlocal" in words else c
