"""`make demo`: train the demo config, score it against bicubic, and draw a comparison.

  python -m edsr_jax.demo --config=configs/demo.py --workdir=runs/demo

Prints PSNR/SSIM of the model and of bicubic upscaling on the held-out images and writes
`<workdir>/comparison.png` (LR | bicubic | model | ground truth crops, one row each).
"""

import functools
import pathlib

import jax
import numpy as np
from absl import flags
from etils import epath

from edsr_jax import cli, config_lib, data, image_io, inference, metrics, models, train

FLAGS = flags.FLAGS
# The checkout's configs/demo.py, whatever the current folder (console script edsr-demo).
DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")


def report(config, state, workdir: epath.Path) -> dict:
  """Scores the trained model on the held-out images; writes comparison.png and JSON."""
  (scale,) = models.model_scales(config.model)
  upscaler = inference.Upscaler(config, train.eval_params(state), ema=state.has_ema)
  val_images = data.load_val_images(config, (scale,))
  strips = []

  def draw(row, lr, bicubic, sr, hr):
    strips.append(metrics.comparison_strip(lr, bicubic, sr, hr, scale=scale))

  means, per_image = metrics.score(
    upscaler, val_images, scale, config.data.val_convention, each=draw
  )
  rows = per_image + [{"name": "mean", **means}]
  width = max(len(row["name"]) for row in rows)
  print(f"\nHeld-out images, x{scale}, Y-PSNR (border {scale}) / SSIM:")
  if state.has_ema:
    print(f"(the model's EMA parameters, config.ema_decay={config.ema_decay})")
  print(f"{'image':<{width}} {'bicubic':>17} {'EDSR (this run)':>17}")
  for row in rows:
    print(
      f"{row['name']:<{width}} {row['bicubic_psnr']:>8.2f} / {row['bicubic_ssim']:.4f}"
      f" {row['psnr']:>8.2f} / {row['ssim']:.4f}"
    )
  print(f"gain over bicubic: {means['psnr'] - means['bicubic_psnr']:+.2f} dB")
  width = max(s.shape[1] for s in strips)
  strips = [
    np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
  ]
  image_io.write_image(workdir / "comparison.png", np.concatenate(strips, axis=0))
  results = {"scale": scale, **means, "per_image": per_image}
  (workdir / "demo_results.json").write_text(metrics.json_text(results))
  print(f"wrote {workdir / 'comparison.png'} and {workdir / 'demo_results.json'}")
  print(f"TensorBoard: tensorboard --logdir {workdir}")
  return results


def main(argv):
  del argv
  workdir = epath.Path(FLAGS.workdir)
  state = train.train_and_evaluate(FLAGS.config, str(workdir))
  if jax.process_index() == 0:
    report(FLAGS.config, state, workdir)


def _define_flags() -> None:
  cli.DEFINE_path("workdir", "runs/demo", "Directory for checkpoints, logs and pictures.")
  config_lib.define_config_flag(help_string=f"Config file (default {DEFAULT_CONFIG}).")


def run() -> None:
  """`edsr-demo` (a console script, pyproject.toml) = `python -m edsr_jax.demo`."""
  _define_flags()
  cli.run(main, functools.partial(config_lib.check_config_args, default=DEFAULT_CONFIG))


if __name__ == "__main__":
  run()
