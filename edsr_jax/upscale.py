r"""Super-resolves image files with a trained checkpoint.

Usage:
  python -m edsr_jax.upscale --checkpoint=runs/x2 --output_dir=out INPUT [INPUT ...] \
      [--scale=2] [--self_ensemble] [--tile_size=N]

INPUT is an image file or a folder (the image files directly in it: png, bmp, jpg/jpeg,
tif/tiff, webp, ppm). --checkpoint is a training workdir (its latest checkpoint) or one
step directory `<workdir>/checkpoints/<step>`. --scale may be left out for a
single-scale (EDSR) model. Each input `<name>.<ext>` is written to
`--output_dir/<name>_x<scale>_SR.png`, the naming `edsr_jax.score` expects by default.

Images are read by `edsr_jax.image_io.read_rgb`'s rules: greyscale and palette images
become RGB, alpha is dropped, 16-bit and float images are refused. Large images are
upscaled in tiles (`--tile_size`, LR pixels; default automatic, 0 = whole image) with
output identical to the untiled network.

Errors: a problem with the checkpoint or the flags, or two inputs that would write the
same output file, stops the run before any image is processed. A bad input (a missing
path, a folder without images, an unreadable image) does not: the other images are
still upscaled and written, then every bad input is reported on its own line
(`error: <path>: <problem>`) and the exit status is 1. A result that cannot be written
(a read-only or full disk) stops the run at once.
"""

from __future__ import annotations

import pathlib
import time

from absl import flags

from edsr_jax import cli, errors, image_io, inference

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module defines no flags.
  cli.DEFINE_path(
    "checkpoint", None, "Training workdir or checkpoint step directory.", required=True
  )
  cli.DEFINE_path("output_dir", None, "Folder for the upscaled PNGs.", required=True)
  flags.DEFINE_integer("scale", None, "Upscaling factor; optional for a one-scale model.")
  flags.DEFINE_bool(
    "self_ensemble", False, "Average the 8 flips/transposes of each input (slower, ~+0.1 dB)."
  )
  flags.DEFINE_integer(
    "tile_size", None, "Tile side in LR pixels; default automatic, 0 = whole image.", lower_bound=0
  )
  flags.DEFINE_bool(
    "use_ema",
    None,
    "Use the EMA of the parameters (the default when the run kept one) or, with "
    "--nouse_ema, the parameters themselves.",
  )


def collect_inputs(args: list[str]) -> tuple[list[pathlib.Path], list[str]]:
  """Image files named by `args` (files, or folders of images) and the problems found."""
  files, problems = [], []
  for arg in args:
    path = pathlib.Path(arg)
    if path.is_dir():
      found, broken = image_io.scan_images(path)
      files += found
      problems += broken
      if not found and not broken:
        problems.append(f"{path}: no image files ({', '.join(image_io.IMAGE_EXTENSIONS)}) in it")
    elif path.exists():
      files.append(path)
    else:
      problems.append(f"{path}: no such file or folder")
  return files, problems


def output_path(output_dir: pathlib.Path, source: pathlib.Path, scale: int) -> pathlib.Path:
  return output_dir / image_io.SR_PATTERN.format(name=source.stem, scale=scale)


def main(argv: list[str]) -> int:
  args = argv[1:]
  if not args:
    raise errors.UserError("no inputs: name image files or folders after the flags")
  files, problems = collect_inputs(args)
  if not files:
    for problem in problems:
      cli.log_error(problem)
    return 1
  output_dir = pathlib.Path(FLAGS.output_dir)
  if output_dir.exists() and not output_dir.is_dir():
    raise errors.UserError(f"--output_dir {output_dir} exists and is not a folder")

  upscaler = inference.load(FLAGS.checkpoint, use_ema=FLAGS.use_ema)
  try:
    scale = upscaler.resolve_scale(FLAGS.scale)
  except ValueError as e:  # the library's check of its argument, here a flag
    raise errors.UserError(str(e)) from None

  # Two inputs of the same name (a.png and a.jpg, or one name in two folders) would
  # overwrite each other's result: refuse before doing any work.
  targets: dict[pathlib.Path, pathlib.Path] = {}
  for f in files:
    target = output_path(output_dir, f, scale)
    if target in targets:
      raise errors.UserError(
        f"{targets[target]} and {f} would both be written to {target}; "
        "rename one or run them separately"
      )
    targets[target] = f

  cli.log(f"upscale: {upscaler}; x{scale}; {len(files)} image(s) -> {output_dir}")
  written = 0
  for i, (target, source) in enumerate(targets.items(), start=1):
    start = time.perf_counter()
    try:
      lr = image_io.read_rgb(source)
    except errors.ImageError as e:
      problems.append(str(e))
      cli.log(f"[{i}/{len(files)}] {source}: skipped (unreadable)")
      continue
    sr = upscaler.upscale(lr, scale, self_ensemble=FLAGS.self_ensemble, tile_size=FLAGS.tile_size)
    try:
      image_io.write_image(target, sr)
    except OSError as e:
      raise errors.UserError(
        f"--output_dir {output_dir}: cannot write {target}: {e.strerror or errors.one_line(e)}"
        f" ({written} image(s) written before)"
      ) from None
    written += 1
    cli.log(
      f"[{i}/{len(files)}] {source} ({lr.shape[1]}x{lr.shape[0]}) -> {target} "
      f"({sr.shape[1]}x{sr.shape[0]}, {time.perf_counter() - start:.1f} s)"
    )
  print(f"wrote {written} image(s) to {output_dir}")
  for problem in problems:
    cli.log_error(problem)
  return 1 if problems else 0


def run() -> None:
  """`edsr-upscale` (a console script, pyproject.toml) = `python -m edsr_jax.upscale`."""
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
