"""Demo: a small EDSR (x2) trained on CPU in minutes on photos bundled with scikit-image.

  make demo                      # or, inside the venv:
  python -m edsr_jax.demo --config=configs/demo.py --workdir=runs/demo

Trains on 13 photos (astronaut, rocket, the two motorcycle views and nine greyscale
ones copied to RGB) and validates on four it never sees: chelsea, coffee,
immunohistochemistry and hubble_deep_field. Expected on a 2-core CPU: about 8 minutes
of training (2,000 steps at ~4.3 steps/s), and the model beating bicubic upscaling on
the held-out photos by about 1.6 dB Y-PSNR (border 2): 35.21 vs 33.60 dB measured.
"""

from edsr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.data.source = "demo"
  # Natural photos only (greyscale ones copied to RGB); space and microscopy images would
  # spend the short schedule on dark, flat patches.
  c.data.demo_train_images = (
    "astronaut",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "camera",
    "coins",
    "brick",
    "grass",
    "gravel",
    "page",
    "text",
    "clock",
    "moon",
  )
  # Held out: four photos of different kinds, none of them seen in training.
  c.data.demo_val_images = ("chelsea", "coffee", "immunohistochemistry", "hubble_deep_field")
  c.data.val_convention = "benchmark"
  c.model.name = "edsr"
  c.model.scales = (2,)
  c.model.num_blocks = 8
  c.model.num_features = 32
  # float32 compute: bfloat16 ("auto" picks it on a CPU with native bf16) measured no
  # faster here, since XLA:CPU runs bf16 convolutions in f32 (benchmarks/README.md).
  # A short run: a larger learning rate than the paper's, halved twice on the way.
  c.num_train_steps = 2000
  c.learning_rate = 1e-3
  c.lr_decay_steps = 800
  c.batch_size = 16
  c.patch_size = 32
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  _, words = config_lib.variant(arg, scales=())
  return config_lib.runlocal(c) if "runlocal" in words else c
