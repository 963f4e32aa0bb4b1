"""EDSR trained on the "291 images" (T91 + BSD200) on a CPU, validated on Set5.

A result anyone can reproduce without an accelerator: the classic small training set
(shared/data/train, see shared/data/SOURCES.md), a network small enough to train in
about 90 minutes on 2 CPU cores, scored on Set5/Set14/B100 like the paper. The scale is
the config argument, `:x2` (the default), `:x3` or `:x4`. From the repository root:

  python -m edsr_jax.main --config=configs/edsr_291.py:x2 --workdir=runs/edsr_291_x2 \
      --config.data.train_dir=../shared/data/train/T91,../shared/data/train/BSD200 \
      --config.data.val_dir=../shared/data/benchmark/Set5

x3 and x4 start from the trained x2 network, as in the paper (every parameter but the
upsampler is copied from it):

  python -m edsr_jax.main --config=configs/edsr_291.py:x3 --workdir=runs/edsr_291_x3 \
      --config.data.train_dir=../shared/data/train/T91,../shared/data/train/BSD200 \
      --config.data.val_dir=../shared/data/benchmark/Set5 --config.init_from=runs/edsr_291_x2
  python -m edsr_jax.main --config=configs/edsr_291.py:x4 --workdir=runs/edsr_291_x4 \
      --config.data.train_dir=../shared/data/train/T91,../shared/data/train/BSD200 \
      --config.data.val_dir=../shared/data/benchmark/Set5 --config.init_from=runs/edsr_291_x2

Then score each run on the benchmarks and draw its validation curve:

  python -m edsr_jax.evaluate --checkpoint=runs/edsr_291_x2 \
      --benchmark_dir=../shared/data/benchmark --datasets=Set5,Set14,B100 \
      --output_json=runs/edsr_291_x2/scores.json
  python scripts/plot_validation_curve.py runs/edsr_291_x2

Expected (Y-PSNR, border = scale, the EMA parameters): not yet measured.
  Set5 x2: not yet measured; Set14 x2: not yet measured; B100 x2: not yet measured.
  Set5 x3: not yet measured; Set5 x4: not yet measured.
  Training time on 2 CPU cores: not yet measured (x2 estimated at about 70 minutes).
For comparison, on the same files: bicubic Set5 33.67 / 30.40 / 28.43 dB (x2/x3/x4);
VDSR (CVPR 2016, 20 layers, trained on these 291 images) reports 37.53 / 33.66 / 31.35;
an 8-block, 32-feature EDSR reached 37.15 dB on Set5 x2 after 5,000 steps (about 20
minutes) with this recipe.

Why this network and recipe: the EDSR baseline (16 blocks, 64 features, LR patch 48)
trains at about 0.3 steps/s on a 2-core CPU: 90 minutes would be 1,600 steps. With 32
features the 16 blocks cost a quarter of that per pixel; measured side by side on this
CPU (batch 16, patch 32), 16 blocks x 32 features ran at 0.68x the speed of the demo's 8
blocks x 32 features (4.3 steps/s on an idle machine), so about 2.9 steps/s, and 12
blocks x 48 features at 0.28x. 16 x 32 keeps the baseline's depth (its receptive field)
and fits 12,000 steps in the budget. The learning rate is the one measured to work for
the 8 x 32 network on these images: Adam 1e-3, halved every 3,000 steps (the paper's
1e-4 is for 300,000 steps). LR patches are the largest that every image allows: the
smallest T91 image (t20.bmp, 78 pixels high) is 39 / 26 / 19 LR pixels at x2 / x3 / x4,
so patches are 32 / 24 / 16 (HR 64 / 72 / 64). An EMA of the parameters (decay 0.999)
is what validation and `evaluate` score; `--config.ema_decay=0` turns it off. It lags
the parameters by about 1,000 steps, so the first validation points (step 1,000: 37%
of its weight still on the initial network) are below the network's own.

Quick smoke run on the built-in demo photos (a few steps, tiny batch):

  python -m edsr_jax.main --config=configs/edsr_291.py:runlocal --workdir=/tmp/edsr_291
  (or `:x3,runlocal`, `:x4,runlocal`)
"""

from edsr_jax import config_lib, errors

# LR patch side per scale: the largest that the smallest T91 image (78 px) allows.
PATCH_SIZES = {2: 32, 3: 24, 4: 16}


def get_config(arg: str | None = None):
  parts = [p for p in (arg or "").split(",") if p]
  scales = [int(p[1]) for p in parts if p in ("x2", "x3", "x4")]
  if len(scales) > 1 or len(parts) - len(scales) > parts.count("runlocal") or len(parts) > 2:
    raise errors.ConfigError(
      f"unknown config argument {arg!r}: allowed x2, x3 or x4 (the scale; default x2), "
      "runlocal, or both (x3,runlocal)"
    )
  scale = scales[0] if scales else 2

  c = config_lib.base_config()
  c.model.name = "edsr"
  c.model.scale = scale
  c.model.num_blocks = 16
  c.model.num_features = 32
  # float32 compute: bfloat16 ("auto" picks it on a CPU with native bf16) measured no
  # faster here, since XLA:CPU runs bf16 convolutions in f32 (benchmarks/README.md).
  c.model.res_scale = 1.0
  c.patch_size = PATCH_SIZES[scale]
  c.batch_size = 16
  c.num_train_steps = 12_000
  c.learning_rate = 1e-3
  c.lr_decay_steps = 3_000
  c.lr_decay_factor = 0.5
  c.ema_decay = 0.999
  c.log_every_steps = 100
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.data.source = "folder"
  c.data.val_convention = "benchmark"  # Set5: Y channel, border = scale
  return config_lib.finalize(c, "runlocal" if "runlocal" in parts else None)
