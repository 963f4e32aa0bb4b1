"""EDSR trained on the "291 images" (T91 + BSD200) on a CPU, validated on Set5.

A result anyone can reproduce without an accelerator: the classic small training set
(T91 and the 200 BSD training images, the set VDSR trained on), a network small enough
to train in about 75 minutes on 2 CPU cores, scored on Set5/Set14/B100 like the paper.
The weights this made ship in `pretrained/edsr_291_x{2,3,4}` (README, "Results"). The
scale is the config argument, `:x2` (the default), `:x3` or `:x4`. From the repository
root, with the data beside the checkout as in this project's CI:

  python -m edsr_jax.main --config=configs/edsr_291.py:x2 --workdir=runs/edsr_291_x2 \
      --config.data.train_dir=../shared/data/train/T91,../shared/data/train/BSD200 \
      --config.data.val_dir=../shared/data/benchmark/Set5

x3 and x4 fine-tune the trained x2 network, as in the paper (every parameter but the
upsampler is copied from it; its EMA, as the run kept one), on a shorter schedule:

  python -m edsr_jax.main --config=configs/edsr_291.py:x3 --workdir=runs/edsr_291_x3 \
      --config.data.train_dir=../shared/data/train/T91,../shared/data/train/BSD200 \
      --config.data.val_dir=../shared/data/benchmark/Set5 --config.init_from=runs/edsr_291_x2
  python -m edsr_jax.main --config=configs/edsr_291.py:x4 --workdir=runs/edsr_291_x4 \
      --config.data.train_dir=../shared/data/train/T91,../shared/data/train/BSD200 \
      --config.data.val_dir=../shared/data/benchmark/Set5 --config.init_from=runs/edsr_291_x2

Expected (Y-PSNR / SSIM, border = scale, the EMA parameters of the last step; the
shipped weights score exactly this; 2-core CPU training times):
  x2 (12,000 steps from scratch, 73 min): Set5 37.56 / 0.9592, Set14 33.11 / 0.9133,
      B100 31.90 / 0.8960
  x3 (6,000 steps from the x2 network, 26 min): Set5 33.78 / 0.9221, Set14 29.88 / 0.8330,
      B100 28.82 / 0.7979
  x4 (8,000 steps from the x2 network, 22 min): Set5 31.44 / 0.8833, Set14 28.11 / 0.7696,
      B100 27.26 / 0.7256
Why this network, learning rate, patch sizes and the EMA (decay 0.999, on for
validation, `evaluate` and `export`), with the measurements: docs/training.md, "The
shipped EDSR-291 models"; the commands that score, export and plot the runs are there too.

Quick smoke run on the built-in demo photos (a few steps, tiny batch):

  python -m edsr_jax.main --config=configs/edsr_291.py:runlocal --workdir=/tmp/edsr_291
  (or `:x3,runlocal`, `:x4,runlocal`)
"""

from edsr_jax import config_lib

# LR patch side per scale: the largest that the smallest T91 image (78 px) allows.
PATCH_SIZES = {2: 32, 3: 24, 4: 16}
# (steps, learning rate, steps per halving). x2 trains from scratch; x3 and x4 fine-tune
# the x2 network (--config.init_from): shorter, from a lower rate. x4 steps are the
# cheapest (16x16 LR patches), so it gets more of them.
SCHEDULES = {2: (12_000, 1e-3, 3_000), 3: (6_000, 5e-4, 1_500), 4: (8_000, 5e-4, 2_000)}


def get_config(arg: str | None = None):
  scale, words = config_lib.variant(arg)

  c = config_lib.base_config()
  c.model.name = "edsr"
  c.model.scales = (scale,)
  c.model.num_blocks = 16
  c.model.num_features = 32
  # float32 compute: bfloat16 ("auto" picks it on a CPU with native bf16) measured no
  # faster here, since XLA:CPU runs bf16 convolutions in f32 (benchmarks/README.md).
  c.model.res_scale = 1.0
  c.patch_size = PATCH_SIZES[scale]
  c.batch_size = 16
  c.num_train_steps, c.learning_rate, c.lr_decay_steps = SCHEDULES[scale]
  c.lr_decay_factor = 0.5
  c.ema_decay = 0.999
  c.log_every_steps = 100
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.data.source = "folder"
  c.data.val_convention = "benchmark"  # Set5: Y channel, border = scale
  return config_lib.runlocal(c) if "runlocal" in words else c
