r"""Super-resolves image files with a trained checkpoint.

Usage:
  python -m edsr_jax.upscale --checkpoint=runs/x2 --output_dir=out INPUT [INPUT ...] \
      [--scale=2] [--self_ensemble] [--tile_size=N]

INPUT is an image file or a folder (the image files directly in it). The same
extensions count both ways: png, bmp, jpg/jpeg/jfif, tif/tiff, webp, avif,
ppm/pgm/pbm/pnm, gif, tga, jp2/j2k. A file named with another extension is an error;
HEIC/HEIF and camera raw files (DNG, CR2, NEF, ...) are reported ("HEIC is not read:
convert it to JPEG or PNG") whether named or found in a folder; hidden files (names
starting with '.') in a folder are skipped. A file named twice, or named and also found
in a folder named, is upscaled once. --checkpoint is a training workdir (its latest
checkpoint) or one step directory `<workdir>/checkpoints/<step>`. --scale may be left
out for a single-scale (EDSR) model. Each input `<name>.<ext>` is written to
`--output_dir/<name>_x<scale>_SR.png`, the naming `edsr_jax.score` expects by default.
When --output_dir is also an input folder, the earlier outputs found there
(`*_x<N>_SR.png`) are not upscaled again; a log line says how many were skipped.

Images are read as a photo viewer shows them (`edsr_jax.image_io`): the EXIF orientation
is applied (a portrait phone photo comes out upright); an animated or multi-page image
(GIF, APNG, WebP, TIFF) is refused, naming its number of frames; 16-bit and float images
are refused; any size is read. The output PNG keeps what the input had:
- greyscale in (L, LA, 1-bit), greyscale out: the network runs on the grey value copied
  to R, G, B, and the output's grey is the rounded mean of its three output channels,
  (R + G + B + 1) // 3 (for grey input a trained network's channels stay within a few
  levels of each other: 12 at most on a test photo with the shipped x2 model);
- alpha (RGBA, LA, or a palette, grey or RGB image with a transparent colour) is
  upscaled by MATLAB-style bicubic interpolation (`edsr_jax.imresize`, rounded and
  clipped to 0..255) and written as RGBA or LA; an alpha opaque everywhere is dropped;
- the ICC colour profile is stored in the output; where it cannot be (a CMYK image is
  converted to RGB, or the profile does not fit the output), a `warning:` line says so.

With --runtime=onnxruntime, --checkpoint is an ONNX model written by `export
--format=onnx`: onnxruntime runs it on exactly the tiles and batches the JAX network would
get (no --self_ensemble).

Large images are upscaled in tiles (`--tile_size`, LR pixels; default automatic, 0 =
whole image) with output identical to the untiled network. Every tile is computed with
a halo: as many extra pixels on each side as the network sees around a pixel (for EDSR
2 * num_blocks + 4, 36 for the baseline). A --tile_size below the halo, which would cost
more than 9x the work of the tile itself, is refused.

Errors: a problem with the checkpoint or the flags, a --tile_size below the halo, or two
inputs that would write the same output file, stops the run before any image is
processed. A bad input (a missing path, a folder without images, a file not named as an
image, an unreadable or animated image) does not: the other images are still upscaled
and written, then every bad input is reported on its own line (`error: <path>:
<problem>`) and the exit status is 1. A result that cannot be written (a read-only or
full disk), or an image that does not fit in memory (one error line naming the image,
its size and what to change in --tile_size), stops the run at once; the images written
before are kept. SIGTERM stops the run with status 143: every output written is whole
and no temporary file is left behind; the hidden temporary files a killed run (SIGKILL)
left in --output_dir are removed by the next run into it (once a minute old).
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
from absl import flags

from edsr_jax import cli, deploy, errors, image_io, imresize, inference

FLAGS = flags.FLAGS

# A tile is computed with its halo on every side: (tile + 2 * halo)**2 pixels for tile**2
# kept. Below tile == halo that is more than 9x the work: refused, not silently slow.
MAX_TILE_WORK = 9


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
    "tile_size",
    None,
    "Tile side in LR pixels; default automatic, 0 = whole image. At least the model's halo "
    "(for EDSR 2 * num_blocks + 4 pixels, 36 for the baseline): each tile is computed with "
    f"that many extra pixels on every side, so a smaller tile (over {MAX_TILE_WORK}x its "
    "work) is refused.",
    lower_bound=0,
  )
  flags.DEFINE_enum(
    "runtime",
    "jax",
    ["jax", "onnxruntime"],
    "jax: --checkpoint is a run or step directory; onnxruntime: --checkpoint is an .onnx "
    "file written by `export --format=onnx`, run by onnxruntime with the same tiles.",
  )
  flags.DEFINE_bool(
    "use_ema",
    None,
    "Use the EMA of the parameters (the default when the run kept one) or, with "
    "--nouse_ema, the parameters themselves.",
  )


def collect_inputs(
  args: list[str], output_dir: pathlib.Path | None = None
) -> tuple[list[pathlib.Path], list[str], list[str]]:
  """(image files named by `args`, files or folders of images; the problems found; log
  lines saying what was left out on purpose).

  Each file comes once (compared by resolved path). In a folder that is also
  `output_dir`, earlier outputs (`*_x<N>_SR.png`) are left out.
  """
  files, problems, notes = [], [], []
  seen: set[pathlib.Path] = set()
  repeated = 0
  out = output_dir.resolve() if output_dir is not None else None
  earlier_output = image_io.sr_name_regex()
  for arg in args:
    path = pathlib.Path(arg)
    if path.is_dir():
      found, broken = image_io.scan_images(path)
      problems += broken
      if not found and not broken:
        problems.append(f"{path}: no image files ({', '.join(image_io.IMAGE_EXTENSIONS)}) in it")
      if out is not None and path.resolve() == out:
        kept = [f for f in found if not earlier_output.fullmatch(f.name)]
        if len(kept) < len(found):
          notes.append(
            f"upscale: skipped {len(found) - len(kept)} earlier output(s) "
            f"({image_io.SR_PATTERN.format(name='*', scale='<N>')}) in {path}, which is "
            "also --output_dir"
          )
        if found and not kept:
          problems.append(
            f"{path}: no image files to upscale in it, only earlier outputs "
            f"({image_io.SR_PATTERN.format(name='*', scale='<N>')}; it is also --output_dir)"
          )
        found = kept
    elif path.exists():
      problem = image_io.image_name_problem(path)
      if problem is not None:
        problems.append(problem)
        continue
      found = [path]
    else:
      problems.append(f"{path}: no such file or folder")
      continue
    for f in found:
      key = f.resolve()
      if key in seen:
        repeated += 1
        continue
      seen.add(key)
      files.append(f)
  if repeated:
    notes.append(
      f"upscale: {repeated} input(s) named more than once (or named and also found in a "
      "folder named): each is upscaled once"
    )
  return files, problems, notes


def output_path(output_dir: pathlib.Path, source: pathlib.Path, scale: int) -> pathlib.Path:
  return output_dir / image_io.SR_PATTERN.format(name=source.stem, scale=scale)


def check_tile_size(tile_size: int | None, halo: int) -> None:
  """Refuses a --tile_size whose halo would make a tile cost over MAX_TILE_WORK times its
  own work (0 and None, whole image and automatic, are always fine)."""
  if tile_size and tile_size < halo:
    work = (tile_size + 2 * halo) ** 2 / tile_size**2
    raise errors.UserError(
      f"--tile_size={tile_size} is too small for this model: every tile is computed with a "
      f"halo of {halo} LR pixels on each side, so a {tile_size}-pixel tile costs {work:.0f}x "
      f"its own work; use at least --tile_size={halo} (at most {MAX_TILE_WORK}x), or leave "
      "--tile_size unset (automatic)"
    )


def upscale_picture(
  upscaler: inference.Upscaler,
  picture: image_io.Picture,
  scale: int,
  self_ensemble: bool = False,
  tile_size: int | None = None,
) -> np.ndarray:
  """The output array of `picture` (see the module docstring): RGB, L, RGBA or LA."""
  sr = upscaler.upscale(picture.rgb, scale, self_ensemble=self_ensemble, tile_size=tile_size)
  if picture.grey:
    # The rounded mean of the three channels (a mean of three integers is never a tie).
    sr = ((sr.astype(np.uint16).sum(axis=-1) + 1) // 3).astype(np.uint8)[..., None]
  if picture.alpha is not None:
    alpha = imresize.imresize(picture.alpha, scale)  # uint8: rounded and clipped
    sr = np.concatenate([sr, alpha[..., None]], axis=-1)
  return sr[..., 0] if sr.shape[-1] == 1 else sr


def _out_of_memory(source, lr_shape, upscaler, scale, written, error) -> errors.UserError:
  h, w = lr_shape[:2]
  tile = upscaler.tile_size_for(lr_shape, scale, FLAGS.self_ensemble, FLAGS.tile_size)
  halo = upscaler.halo(scale)
  if tile == 0:
    how = "whole" + (" (--tile_size=0)" if FLAGS.tile_size == 0 else "")
    example = f"--tile_size={max(halo, 256)}"
    remedy = (
      f"leave --tile_size unset (automatic tiles) or give a tile size, e.g. {example}"
      if FLAGS.tile_size == 0
      else f"give a tile size, e.g. {example}"
    )
  else:
    how = f"in tiles of {tile} LR pixels"
    remedy = f"lower --tile_size below {tile} (at least {halo})"
  if FLAGS.self_ensemble:
    remedy += ", or leave out --self_ensemble (8x the memory)"
  kept = f"; the {written} image(s) written before are kept" if written else ""
  return errors.UserError(
    f"{source} ({w}x{h} pixels): out of memory upscaling it {how} "
    f"({errors.one_line(error)[:160]}); {remedy}{kept}"
  )


def main(argv: list[str]) -> int:
  args = argv[1:]
  if not args:
    raise errors.UserError("no inputs: name image files or folders after the flags")
  output_dir = pathlib.Path(FLAGS.output_dir)
  files, problems, notes = collect_inputs(args, output_dir)
  if not files:
    for problem in problems:
      cli.log_error(problem)
    return 1
  if output_dir.exists() and not output_dir.is_dir():
    raise errors.UserError(f"--output_dir {output_dir} exists and is not a folder")

  if FLAGS.runtime == "onnxruntime":
    if FLAGS.self_ensemble or FLAGS.use_ema is not None:
      raise errors.UserError(
        "--runtime=onnxruntime runs the exported network as it is: drop --self_ensemble "
        "and --use_ema (choose the parameters when exporting)"
      )
    upscaler = deploy.load_onnx(FLAGS.checkpoint)
  else:
    upscaler = inference.load(FLAGS.checkpoint, use_ema=FLAGS.use_ema)
  try:
    scale = upscaler.resolve_scale(FLAGS.scale)
  except ValueError as e:  # the library's check of its argument, here a flag
    raise errors.UserError(str(e)) from None
  check_tile_size(FLAGS.tile_size, upscaler.halo(scale))

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

  for note in notes:
    cli.log(note)
  stale = image_io.remove_stale_temp_files(output_dir) if output_dir.is_dir() else []
  if stale:
    cli.log(f"upscale: removed {len(stale)} temporary file(s) a stopped run left in {output_dir}")
  cli.log(f"upscale: {upscaler}; x{scale}; {len(files)} image(s) -> {output_dir}")
  written = 0
  for i, (target, source) in enumerate(targets.items(), start=1):
    start = time.perf_counter()
    try:
      picture = image_io.read_picture(source)
    except errors.ImageError as e:
      problems.append(str(e))
      cli.log(f"[{i}/{len(files)}] {source}: skipped (unreadable)")
      continue
    for warning in picture.warnings:
      cli.log(f"warning: {warning}")
    lr = picture.rgb
    try:
      sr = upscale_picture(upscaler, picture, scale, FLAGS.self_ensemble, FLAGS.tile_size)
    except Exception as e:
      if not errors.out_of_memory(e):
        raise
      raise _out_of_memory(source, lr.shape, upscaler, scale, written, e) from None
    try:
      image_io.write_image(target, sr, icc_profile=picture.icc_profile)
    except OSError as e:
      raise errors.UserError(
        f"--output_dir {output_dir}: cannot write {target}: {e.strerror or errors.one_line(e)}"
        f" ({written} image(s) written before)"
      ) from None
    written += 1
    cli.log(
      f"[{i}/{len(files)}] {source} ({lr.shape[1]}x{lr.shape[0]}) -> {target} "
      f"({sr.shape[1]}x{sr.shape[0]} {picture.mode}, {time.perf_counter() - start:.1f} s)"
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
