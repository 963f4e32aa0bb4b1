r"""Scores a trained checkpoint on the standard benchmarks, next to bicubic upscaling.

Usage:
  python -m edsr_jax.evaluate --checkpoint=runs/x2 --benchmark_dir=/data/benchmark \
      [--datasets=Set5,Set14,B100,Urban100] [--scales=2,3,4] [--self_ensemble] \
      [--output_json=scores.json] [--save_images=results] [--tile_size=N] [--max_images=N] \
      [--nouse_ema]

Each dataset is `--benchmark_dir/<Set>/HR/<name>.png` with its LR inputs in
`<Set>/LR_bicubic/X<s>/<name>x<s>.png` (the official EDSR layout). The name `DIV2K`
means the DIV2K validation set: `--benchmark_dir` itself or `--benchmark_dir/DIV2K`
holding `DIV2K_valid_HR/` and `DIV2K_valid_LR_bicubic/X<s>/`.

Scores follow the paper's tables (`edsr_jax.metrics.evaluate_pair`): benchmark sets on
the Y channel with `scale` border pixels removed, DIV2K on RGB with `scale + 6`. Greyscale
images count as RGB with three equal channels, as in the official code. The bicubic row
upscales the same LR files with MATLAB-compatible bicubic (uint8, as MATLAB's imresize).
Only the scales the model serves are scored (`--scales` defaults to all of them).

Prints a table (rows bicubic and the model, columns `<Set> x<s>` as PSNR/SSIM), progress
per image on stderr. --output_json writes
{"<Set>": {"x<s>": {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}}} (means over the
images). --save_images writes `<dir>/<Set>/x<s>/<name>_x<s>_SR.png`, which
`python -m edsr_jax.score --hr_dir=<Set>/HR --sr_dir=<dir>/<Set>/x<s> --scale=<s>` scores.
Problems with the inputs end the run with a one-line message and exit status 1.
"""

from __future__ import annotations

import pathlib
import time

from absl import app, flags

from edsr_jax import checkpoint, cli, data, errors, image_io, inference, metrics, tfds_data

FLAGS = flags.FLAGS
DEFAULT_DATASETS = ("Set5", "Set14", "B100", "Urban100")
DIV2K = "DIV2K"


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module defines no flags.
  cli.DEFINE_path(
    "checkpoint", None, "Training workdir or checkpoint step directory.", required=True
  )
  cli.DEFINE_path(
    "benchmark_dir",
    None,
    "Folder holding the datasets (not needed for DIV2K read through --tfds_data_dir).",
  )
  cli.DEFINE_path(
    "tfds_data_dir",
    None,
    "Read DIV2K's validation split from TFDS "
    "(div2k/bicubic_x<s>, prepared there) instead of folders.",
  )
  flags.DEFINE_list("datasets", list(DEFAULT_DATASETS), "Datasets to score (folder names).")
  flags.DEFINE_list("scales", None, "Scales to score; default all the model serves.")
  flags.DEFINE_bool("self_ensemble", False, "Average the 8 flips/transposes (the '+' rows).")
  cli.DEFINE_path("output_json", None, "Optional path of a JSON summary.")
  cli.DEFINE_path("save_images", None, "Optional folder for the SR images.")
  flags.DEFINE_integer(
    "tile_size", None, "Tile side in LR pixels; default automatic.", lower_bound=0
  )
  flags.DEFINE_integer(
    "max_images", None, "Score only the first N images of each set.", lower_bound=1
  )
  flags.DEFINE_bool(
    "use_ema",
    None,
    "Score the EMA of the parameters (the default when the run kept one) or, with "
    "--nouse_ema, the parameters themselves.",
  )


def dataset_root(benchmark_dir: pathlib.Path, name: str) -> pathlib.Path:
  """The folder of dataset `name`; an error listing the datasets that do exist."""
  if name == DIV2K:
    for root in (benchmark_dir, benchmark_dir / DIV2K):
      if (root / "DIV2K_valid_HR").is_dir():
        return root
    raise errors.UserError(
      f"no DIV2K validation set: neither {benchmark_dir} nor "
      f"{benchmark_dir / DIV2K} holds DIV2K_valid_HR/"
    )
  root = benchmark_dir / name
  if not root.is_dir():
    present = sorted(p.name for p in benchmark_dir.iterdir() if p.is_dir())
    raise errors.UserError(
      f"dataset {name}: no folder {root}; {benchmark_dir} holds "
      f"{', '.join(present) if present else 'no folders'}"
    )
  return root


def parse_scales(values, served: tuple[int, ...]) -> tuple[int, ...]:
  if not values:
    return served
  try:
    wanted = tuple(int(v) for v in values)
  except ValueError:
    raise errors.UserError(f"--scales must be integers, got {','.join(values)}") from None
  scales = tuple(s for s in wanted if s in served)
  if not scales:
    raise errors.UserError(
      f"the model serves {', '.join(f'x{s}' for s in served)}, none of --scales={','.join(values)}"
    )
  skipped = [s for s in wanted if s not in served]
  if skipped:
    cli.log(f"evaluate: skipping {', '.join(f'x{s}' for s in skipped)}: not served by the model")
  return scales


def score_dataset(
  upscaler,
  name: str,
  images: data.SRImages,
  scale: int,
  convention: str,
  *,
  self_ensemble: bool,
  tile_size,
  save_dir: pathlib.Path | None,
) -> dict:
  """Mean PSNR/SSIM of the model and of bicubic over one dataset at one scale.

  Progress on stderr, one line per image; the SR images go to `save_dir` if given.
  """
  done = []
  start = [time.perf_counter()]

  def report(row, lr, bicubic, sr, hr):
    if save_dir is not None:
      target = save_dir / image_io.SR_PATTERN.format(name=row["name"], scale=scale)
      try:
        image_io.write_image(target, sr)
      except OSError as e:
        raise errors.UserError(
          f"--save_images: cannot write {target}: {e.strerror or errors.one_line(e)}"
        ) from None
    done.append(row["name"])
    cli.log(
      f"{name} x{scale} [{len(done)}/{len(images)}] {row['name']}: "
      f"{row['psnr']:.2f} dB / {row['ssim']:.4f} "
      f"(bicubic {row['bicubic_psnr']:.2f} / {row['bicubic_ssim']:.4f}, "
      f"{time.perf_counter() - start[0]:.1f} s)"
    )
    start[0] = time.perf_counter()

  means, _ = metrics.score(
    upscaler,
    images,
    scale,
    convention,
    self_ensemble=self_ensemble,
    tile_size=tile_size,
    each=report,
  )
  return means


def format_table(results: dict, model_label: str) -> str:
  """Rows bicubic and the model; one `PSNR/SSIM` column per dataset and scale."""
  columns = [(name, key) for name, by_scale in results.items() for key in by_scale]
  headers = [f"{name} {key}" for name, key in columns]
  label_width = max(len("Bicubic"), len(model_label))
  cells = {
    "Bicubic": [
      f"{results[n][k]['bicubic_psnr']:.2f}/{results[n][k]['bicubic_ssim']:.4f}" for n, k in columns
    ],
    model_label: [f"{results[n][k]['psnr']:.2f}/{results[n][k]['ssim']:.4f}" for n, k in columns],
  }
  widths = [max(len(h), 12) for h in headers]
  lines = [
    " | ".join(
      [f"{'Method':<{label_width}}"] + [f"{h:^{w}}" for h, w in zip(headers, widths, strict=True)]
    )
  ]
  lines.append("-+-".join(["-" * label_width] + ["-" * w for w in widths]))
  for label, row in cells.items():
    lines.append(
      " | ".join(
        [f"{label:<{label_width}}"] + [f"{c:^{w}}" for c, w in zip(row, widths, strict=True)]
      )
    )
  return "\n".join(lines)


def _from_tfds(name: str) -> bool:
  return name == DIV2K and bool(FLAGS.tfds_data_dir)


def evaluate_from_flags() -> dict:
  if not FLAGS.datasets:
    raise errors.UserError("--datasets is empty")
  roots = {}
  if not all(_from_tfds(name) for name in FLAGS.datasets):
    benchmark_dir = pathlib.Path(FLAGS.benchmark_dir or "")
    if not FLAGS.benchmark_dir or not benchmark_dir.is_dir():
      raise errors.UserError(f"--benchmark_dir {FLAGS.benchmark_dir!r} is not an existing folder")
    # Every dataset folder is checked before anything slow happens.
    roots = {
      name: dataset_root(benchmark_dir, name) for name in FLAGS.datasets if not _from_tfds(name)
    }
  save_images = pathlib.Path(FLAGS.save_images) if FLAGS.save_images else None
  if save_images is not None and save_images.exists() and not save_images.is_dir():
    raise errors.UserError(f"--save_images {save_images} exists and is not a folder")
  upscaler = inference.load(FLAGS.checkpoint, use_ema=FLAGS.use_ema)
  scales = parse_scales(FLAGS.scales, upscaler.scales)
  cli.log(
    f"evaluate: {upscaler}; {', '.join(FLAGS.datasets)} at {', '.join(f'x{s}' for s in scales)}"
    f"{' with self-ensemble' if FLAGS.self_ensemble else ''}"
  )

  results: dict[str, dict[str, dict]] = {}
  for name in FLAGS.datasets:
    try:
      if _from_tfds(name):
        images = tfds_data.load(
          "div2k/bicubic_x{scale}",
          scales,
          "valid",
          data_dir=FLAGS.tfds_data_dir,
          max_images=FLAGS.max_images,
        )
      else:
        images = data.load_folder(roots[name], scales, split="valid", max_images=FLAGS.max_images)
    except (errors.ConfigError, errors.ImageError) as e:
      raise type(e)(f"dataset {name}: {e}") from None
    convention = "div2k" if name == DIV2K else "benchmark"
    for s in scales:
      save_dir = None if save_images is None else save_images / name / f"x{s}"
      results.setdefault(name, {})[f"x{s}"] = score_dataset(
        upscaler,
        name,
        images,
        s,
        convention,
        self_ensemble=FLAGS.self_ensemble,
        tile_size=FLAGS.tile_size,
        save_dir=save_dir,
      )

  # Shipped weights (`export`) are step 0 of their own workdir: name the step they were.
  exported = checkpoint.export_record(upscaler.source)
  if exported is not None and isinstance(exported.get("step"), int):
    what = f"exported step {exported['step']}{', EMA' if exported.get('ema') is True else ''}"
  elif exported is not None and exported.get("imported") is True:
    what = f"imported from {pathlib.Path(str(exported.get('source'))).name}"
  else:
    what = f"step {pathlib.Path(upscaler.source).name}{', EMA' if upscaler.ema else ''}"
  label = f"{upscaler.config.model.name.upper()}{'+' if FLAGS.self_ensemble else ''} ({what})"
  print(format_table(results, label))
  if FLAGS.output_json:
    out = pathlib.Path(FLAGS.output_json)
    try:
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(metrics.json_text(results))
    except OSError as e:
      raise errors.UserError(f"cannot write --output_json {out}: {e}") from None
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  evaluate_from_flags()


def run() -> None:
  """`edsr-evaluate` (a console script, pyproject.toml) = `python -m edsr_jax.evaluate`."""
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
