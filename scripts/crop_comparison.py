r"""Draws bicubic / model / ground truth side by side on a crop of a benchmark image, as a PNG.

  python scripts/crop_comparison.py --checkpoint=pretrained/edsr_291_x4 \
      --hr=../shared/data/benchmark/Set5/HR/butterfly.png \
      --lr=../shared/data/benchmark/Set5/LR_bicubic/X4/butterflyx4.png \
      --box=96,96,96 [--zoom=3] --output=docs/results/butterfly_x4.png

`--lr` is the benchmark's own LR file (MATLAB's bicubic downscale), upscaled by the
model and by MATLAB-compatible bicubic (`metrics.bicubic_upscale`, as `evaluate`'s
bicubic row). `--box=x,y,size` is the crop in HR pixels (left, top, side); each panel is
enlarged `--zoom` times with nearest neighbour so the pixels stay visible. Each panel's
caption gives the whole image's Y-PSNR (border = scale), the number `evaluate` reports
for it. Problems (unreadable images, sizes that do not match the scale, a box outside the
image) end the run with a one-line message and exit status 1.
"""

import pathlib

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from edsr_jax import cli, errors, image_io, inference, metrics

FLAGS = flags.FLAGS
GAP, CAPTION = 6, 18


def _define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "Workdir or checkpoint of the model.", required=True)
  flags.DEFINE_string("hr", None, "Ground-truth (HR) image.", required=True)
  flags.DEFINE_string("lr", None, "Its LR image (the benchmark's LR_bicubic file).", required=True)
  flags.DEFINE_list("box", None, "Crop: left,top,side in HR pixels.", required=True)
  flags.DEFINE_integer("zoom", 3, "Nearest-neighbour enlargement of each panel.", lower_bound=1)
  flags.DEFINE_string("output", None, "PNG to write.", required=True)


def parse_box(values: list[str], height: int, width: int) -> tuple[int, int, int]:
  try:
    x, y, side = (int(v) for v in values)
  except ValueError:
    raise errors.UserError(
      f"--box={','.join(values)}: expected three integers left,top,side"
    ) from None
  if side < 1 or x < 0 or y < 0 or x + side > width or y + side > height:
    raise errors.UserError(
      f"--box={x},{y},{side} is not inside the {width}x{height} HR image "
      "(left + side <= width, top + side <= height)"
    )
  return x, y, side


def comparison(panels: list[tuple[str, np.ndarray]], zoom: int) -> Image.Image:
  """The panels (caption, uint8 crop) enlarged `zoom` times, in a row with captions above."""
  side = panels[0][1].shape[0] * zoom
  canvas = Image.new("RGB", (len(panels) * side + (len(panels) - 1) * GAP, side + CAPTION), "white")
  draw = ImageDraw.Draw(canvas)
  for k, (caption, crop) in enumerate(panels):
    left = k * (side + GAP)
    canvas.paste(Image.fromarray(crop).resize((side, side), Image.NEAREST), (left, CAPTION))
    draw.text((left + 2, 3), caption, fill="black")
  return canvas


def main(argv: list[str]) -> None:
  del argv
  hr, lr = image_io.read_rgb(FLAGS.hr), image_io.read_rgb(FLAGS.lr)
  upscaler = inference.load(FLAGS.checkpoint)
  if len(upscaler.scales) != 1:
    raise errors.UserError(
      f"{FLAGS.checkpoint} serves scales {upscaler.scales}: give a one-scale model"
    )
  (scale,) = upscaler.scales
  if not 0 <= hr.shape[0] - lr.shape[0] * scale < scale or not (
    0 <= hr.shape[1] - lr.shape[1] * scale < scale
  ):
    raise errors.ImageError(
      f"{FLAGS.lr} ({lr.shape[1]}x{lr.shape[0]}) times {scale} is not the size of {FLAGS.hr} "
      f"({hr.shape[1]}x{hr.shape[0]}) up to {scale - 1} pixels: not its x{scale} LR image"
    )
  hr = metrics.crop_hr_to_lr(hr, lr.shape, scale=scale)  # the benchmark's modcrop
  x, y, side = parse_box(FLAGS.box, *hr.shape[:2])
  bicubic = metrics.bicubic_upscale(lr, scale)
  sr = upscaler.upscale(lr)
  panels = []
  for name, image in (("bicubic", bicubic), (f"{upscaler.config.model.name.upper()}", sr)):
    db = metrics.evaluate_pair(image, hr, scale=scale)["psnr"]
    panels.append((f"{name} x{scale}: {db:.2f} dB", image[y : y + side, x : x + side]))
  panels.append(("ground truth", hr[y : y + side, x : x + side]))
  out = pathlib.Path(FLAGS.output)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    comparison(panels, FLAGS.zoom).save(out)
  except OSError as e:
    raise errors.UserError(f"cannot write --output {out}: {e}") from None
  print(f"wrote {out}: " + "; ".join(caption for caption, _ in panels[:2]))


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
