r"""Scores a folder of SR images against their HR images (PSNR / SSIM).

Usage:
  python -m edsr_jax.score --hr_dir=benchmark/Set5/HR --sr_dir=results/Set5/x2 --scale=2 \
      [--sr_pattern='{name}_x{scale}_SR.png'] [--convention=benchmark|div2k] \
      [--output_json=scores.json]

Every HR image `<name>.<ext>` in --hr_dir (the extensions of
`edsr_jax.image_io.IMAGE_EXTENSIONS`; sorted by file name) is paired with
`--sr_dir / --sr_pattern.format(name=name, scale=scale)`. The default pattern,
`{name}_x{scale}_SR.png`, is the file naming of the EDSR authors' code (and of
`upscale` and `evaluate`); for RCAN's released results use `{name}_RCAN_x{scale}.png`.
Scoring follows `edsr_jax.metrics.evaluate_pair` (HR cropped top-left to the SR size,
then the chosen convention's channel and border).

Images are read by `edsr_jax.image_io.read_rgb`'s rules, as everywhere in the project:
greyscale copied to R, G, B (scored as R = G = B, as the official code does), palette
and CMYK converted, alpha dropped (not composited). 16-bit and float images are refused:
the scores are defined on 8-bit images.

Prints a per-image table and the mean; --output_json writes
{"psnr": mean, "ssim": mean, "scale", "convention", "num_images", "per_image":
[{"name", "psnr", "ssim"}, ...]}. A PSNR of identical images is infinite and is written
as the string "inf" (JSON has no infinity; `float()` reads it back). Input problems
(missing folder or SR file, unreadable image, size mismatch) end the run with a one-line
message naming the file and exit status 1.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
from absl import app, flags

from edsr_jax import cli, errors, image_io, metrics

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module (tests, notebooks, a
  # training script with its own --scale) cannot collide with other absl flags.
  cli.DEFINE_path("hr_dir", None, "Folder of ground-truth HR images.", required=True)
  cli.DEFINE_path("sr_dir", None, "Folder of super-resolved images.", required=True)
  flags.DEFINE_integer(
    "scale", None, "Upscaling factor (sets the border).", lower_bound=1, required=True
  )
  flags.DEFINE_string(
    "sr_pattern",
    image_io.SR_PATTERN,
    "SR file name for HR image <name>.<ext>; str.format fields {name} and {scale}.",
  )
  flags.DEFINE_enum(
    "convention",
    "benchmark",
    list(metrics.CONVENTIONS),
    "benchmark: Y PSNR/SSIM, border=scale. div2k: RGB PSNR, Y SSIM, border=scale+6.",
  )
  cli.DEFINE_path("output_json", None, "Optional path of a JSON summary.")


def find_pairs(
  hr_dir: pathlib.Path, sr_dir: pathlib.Path, sr_pattern: str, scale: int
) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  """Returns (name, hr_path, sr_path) for every HR image, sorted by HR file name."""
  for label, folder in (("hr_dir", hr_dir), ("sr_dir", sr_dir)):
    if not folder.is_dir():
      raise errors.UserError(f"--{label} {folder} is not an existing directory")
  try:
    hr_paths = image_io.list_images(hr_dir)
  except errors.ImageError as e:  # no images, or one it cannot read (HEIC, a broken link)
    raise errors.UserError(f"--hr_dir: {e}") from None
  pairs = []
  for hr_path in hr_paths:
    try:
      sr_name = sr_pattern.format(name=hr_path.stem, scale=scale)
    except (KeyError, IndexError, ValueError) as e:
      raise errors.UserError(f"bad --sr_pattern {sr_pattern!r}: {errors.one_line(e)}") from e
    pairs.append((hr_path.stem, hr_path, sr_dir / sr_name))
  # Report every missing SR file at once rather than failing after partial scoring.
  missing = [f"{sr} (for {hr.name})" for _, hr, sr in pairs if not sr.is_file()]
  if missing:
    raise errors.UserError(f"missing SR file(s): {', '.join(missing)}")
  return pairs


def score_dirs(
  hr_dir: pathlib.Path, sr_dir: pathlib.Path, *, scale: int, sr_pattern: str, convention: str
) -> dict:
  """Scores every pair and returns the JSON summary (means and per-image rows)."""
  rows = []
  for name, hr_path, sr_path in find_pairs(hr_dir, sr_dir, sr_pattern, scale):
    sr, hr = image_io.read_rgb(sr_path), image_io.read_rgb(hr_path)
    try:
      result = metrics.evaluate_pair(sr, hr, scale=scale, convention=convention)
    except ValueError as e:
      raise errors.ImageError(
        f"cannot score {sr_path} against {hr_path}: {errors.one_line(e)}"
      ) from e
    rows.append({"name": name, "psnr": result["psnr"], "ssim": result["ssim"]})
  return {
    "psnr": float(np.mean([r["psnr"] for r in rows])),
    "ssim": float(np.mean([r["ssim"] for r in rows])),
    "scale": scale,
    "convention": convention,
    "num_images": len(rows),
    "per_image": rows,
  }


def format_table(summary: dict) -> str:
  width = max([len("mean")] + [len(r["name"]) for r in summary["per_image"]])
  lines = [f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>6}"]
  for r in summary["per_image"]:
    lines.append(f"{r['name']:<{width}}  {r['psnr']:8.4f}  {r['ssim']:.4f}")
  lines.append(f"{'mean':<{width}}  {summary['psnr']:8.4f}  {summary['ssim']:.4f}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  summary = score_dirs(
    pathlib.Path(FLAGS.hr_dir),
    pathlib.Path(FLAGS.sr_dir),
    scale=FLAGS.scale,
    sr_pattern=FLAGS.sr_pattern,
    convention=FLAGS.convention,
  )
  print(
    f"x{summary['scale']} ({summary['convention']} convention), {summary['num_images']} image(s)"
  )
  print(format_table(summary))
  if FLAGS.output_json:
    out = pathlib.Path(FLAGS.output_json)
    try:
      out.write_text(metrics.json_text(summary))
    except OSError as e:
      raise errors.UserError(f"cannot write --output_json {out}: {errors.one_line(e)}") from e
  if math.isinf(summary["psnr"]):
    print("note: some SR images equal their HR image exactly (infinite PSNR)")


def run() -> None:
  """`edsr-score` (a console script, pyproject.toml) = `python -m edsr_jax.score`."""
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
