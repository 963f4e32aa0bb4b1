r"""Draws a training run's validation PSNR against the training step, as a PNG.

  python scripts/plot_validation_curve.py runs/edsr_291_x2 \
      [--output=runs/edsr_291_x2/validation_psnr.png] [--title=...] [--width=960 --height=600] \
      [--ymin=33]

Reads the TensorBoard event files directly in the workdir (`events.out.tfevents.*`; a
resumed run adds one per start, and a step logged twice keeps its latest value): the
scalar `val/psnr` (MDSR: `val/psnr_x2`, `val/psnr_x3`, ... one curve per scale) and, when
logged, `val/bicubic_psnr` (`_x<s>`), drawn as a dashed line. Training logs both at every
validation. Drawn with Pillow only (axes, ticks, grid, labels, legend); it needs
`tensorboard`'s protocol buffers to read the files (not TensorFlow) and does not import
edsr_jax, so it works on any copy of a workdir. Prints the last value of each curve.
Exit status 1 with one `error:` line when the folder holds no event files or no
validation PSNR.
"""

import argparse
import math
import pathlib
import re
import struct
import sys

from PIL import Image, ImageDraw, ImageFont

TAG = re.compile(r"val/(?P<bicubic>bicubic_)?psnr(?:_x(?P<scale>\d+))?")
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
GRID, AXIS, TEXT = (225, 225, 225), (60, 60, 60), (20, 20, 20)


class PlotError(Exception):
  """A problem with the workdir or the arguments: one line for the user."""


def _records(path: pathlib.Path):
  """The records of a TFRecord file (an event file): length, its CRC, data, the data's CRC.

  Read here rather than through tensorboard's loader, which imports TensorFlow
  (seconds). A record cut short at the end (a run killed while writing) ends the file.
  """
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def read_curves(workdir: pathlib.Path) -> dict[tuple[str, int | None], dict[int, float]]:
  """{(kind, scale): {step: dB}} with kind 'model' or 'bicubic', scale None for `val/psnr`."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.util import tensor_util

  if not workdir.is_dir():
    raise PlotError(f"{workdir}: not a folder (expected a training workdir)")
  files = sorted(workdir.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
  if not files:
    raise PlotError(f"{workdir}: no TensorBoard event files (events.out.tfevents.*) in it")
  curves: dict[tuple[str, int | None], dict[int, float]] = {}
  tags = set()
  for path in files:  # oldest first: a later run's value of a step replaces an earlier one
    for record in _records(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        tags.add(value.tag)
        m = TAG.fullmatch(value.tag)
        if not m:
          continue
        if value.HasField("tensor"):
          number = float(tensor_util.make_ndarray(value.tensor))
        else:
          number = float(value.simple_value)
        key = ("bicubic" if m["bicubic"] else "model", int(m["scale"]) if m["scale"] else None)
        curves.setdefault(key, {})[int(event.step)] = number
  if not any(kind == "model" for kind, _ in curves):
    logged = sorted(t for t in tags if t.startswith("val/")) or ["none"]
    raise PlotError(
      f"{workdir}: no validation PSNR (val/psnr or val/psnr_x<s>) in its event files; "
      f"validation tags logged: {', '.join(logged[:8])}"
    )
  return curves


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
  """About `count` round tick values, the first <= low and the last >= high."""
  if high <= low:
    high = low + 1
  raw = (high - low) / count
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
  first = math.floor(low / step + 1e-9) * step
  last = math.ceil(high / step - 1e-9) * step
  return [round(first + k * step, 10) for k in range(round((last - first) / step) + 1)]


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow built without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def _step_label(step: float, x_max: float) -> str:
  return f"{step / 1000:g}k" if x_max >= 10_000 and step else f"{step:,.0f}"


def _dashed(draw, points, color, width, dash=10, gap=6):
  for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
    length = math.hypot(x1 - x0, y1 - y0)
    pos = 0.0
    while pos < length:
      end = min(pos + dash, length)
      a, b = pos / length, end / length
      draw.line(
        [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
        fill=color,
        width=width,
      )
      pos = end + gap


def draw_plot(
  curves, title: str, width: int = 960, height: int = 600, y_min: float | None = None
) -> Image.Image:
  """The line plot of `curves` (see read_curves) on a white canvas, legend below it.

  `y_min`: the lowest PSNR shown (default: the lowest value); lower points sit on the
  bottom axis, so the top of a curve that starts far below can be read. Ignored, with a
  warning, when no value is above it.
  """
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  font, small, big = _font(15), _font(13), _font(18)
  # One legend row per scale: the model (solid, its last value) and bicubic (dashed).
  scales = sorted({scale for _, scale in curves}, key=lambda s: -1 if s is None else s)
  row = 22
  left, right, top, bottom = 80, width - 30, 50, height - 70 - row * len(scales)
  if right - left < 100 or bottom - top < 100:
    raise PlotError(f"--width={width} --height={height} is too small for a plot")

  steps = [s for points in curves.values() for s in points]
  values = [v for points in curves.values() for v in points.values() if math.isfinite(v)]
  x_ticks = nice_ticks(0, max(steps), 6)
  x_max = x_ticks[-1]
  if y_min is not None and y_min >= max(values):  # e.g. a short run: show it all instead
    print(
      f"plot_validation_curve: --ymin={y_min:g} ignored: not below the highest value, "
      f"{max(values):.3f} dB",
      file=sys.stderr,
    )
    y_min = None
  low = min(values) if y_min is None else y_min
  pad = max(0.03 * (max(values) - low), 0.05)
  y_ticks = nice_ticks(low if y_min is not None else low - pad, max(values) + pad, 6)
  y_low, y_high = y_ticks[0], y_ticks[-1]

  def x_of(step):
    return left + (right - left) * step / x_max

  def y_of(value):
    return bottom - (bottom - top) * (max(value, y_low) - y_low) / (y_high - y_low)

  # Grid, ticks and their labels; axes; title and axis labels.
  for t in y_ticks:
    y = y_of(t)
    draw.line([(left, y), (right, y)], fill=GRID)
    draw.line([(left - 5, y), (left, y)], fill=AXIS)
    draw.text((left - 8, y), f"{t:g}", fill=TEXT, font=small, anchor="rm")
  for t in x_ticks:
    x = x_of(t)
    draw.line([(x, top), (x, bottom)], fill=GRID)
    draw.line([(x, bottom), (x, bottom + 5)], fill=AXIS)
    draw.text((x, bottom + 8), _step_label(t, x_max), fill=TEXT, font=small, anchor="mt")
  draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS, width=2)
  draw.text((width / 2, 14), title, fill=TEXT, font=big, anchor="mt")
  draw.text(((left + right) / 2, bottom + 28), "training step", fill=TEXT, font=font, anchor="mt")
  label = Image.new("RGB", (200, 24), "white")
  ImageDraw.Draw(label).text((100, 12), "PSNR (dB)", fill=TEXT, font=font, anchor="mm")
  label = label.rotate(90, expand=True)
  image.paste(label, (8, int((top + bottom) / 2 - label.height / 2)))

  # Curves, one color per scale, and their legend rows.
  swatch = 34
  for i, scale in enumerate(scales):
    color = COLORS[i % len(COLORS)]
    suffix = "" if scale is None else f" x{scale}"
    y_legend = bottom + 58 + row * i
    x_legend = left
    for kind in ("model", "bicubic"):
      points = curves.get((kind, scale))
      if not points:
        continue
      xy = [(x_of(s), y_of(v)) for s, v in sorted(points.items()) if math.isfinite(v)]
      swatch_xy = [(x_legend, y_legend), (x_legend + swatch, y_legend)]
      if kind == "bicubic":
        if len(xy) == 1:  # one validation: a level line across the plot
          xy = [(left, xy[0][1]), (right, xy[0][1])]
        _dashed(draw, xy, color, 2)
        _dashed(draw, swatch_xy, color, 2, dash=8, gap=4)
        text = f"bicubic{suffix}"
      else:
        if len(xy) > 1:
          draw.line(xy, fill=color, width=3, joint="curve")
        for x, y in xy:
          draw.ellipse([(x - 4, y - 4), (x + 4, y + 4)], fill=color)
        draw.line(swatch_xy, fill=color, width=3)
        last_step, last = max(points.items())
        text = f"model{suffix}: {last:.2f} dB at step {last_step:,}"
      draw.text((x_legend + swatch + 8, y_legend), text, fill=TEXT, font=small, anchor="lm")
      x_legend += swatch + 8 + max(draw.textlength(text, font=small), 250) + 30
  return image


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", type=pathlib.Path, help="training workdir (holds the event files)")
  parser.add_argument("--output", type=pathlib.Path, help="PNG path (default: in the workdir)")
  parser.add_argument("--title", help="default: '<workdir name>: validation PSNR'")
  parser.add_argument("--width", type=int, default=960)
  parser.add_argument("--height", type=int, default=600)
  parser.add_argument("--ymin", type=float, help="lowest PSNR shown; lower points on the axis")
  args = parser.parse_args(argv)
  try:
    curves = read_curves(args.workdir)
    title = args.title or f"{args.workdir.resolve().name}: validation PSNR"
    image = draw_plot(curves, title, args.width, args.height, args.ymin)
    output = args.output or args.workdir / "validation_psnr.png"
    try:
      output.parent.mkdir(parents=True, exist_ok=True)
      image.save(output)
    except OSError as e:
      raise PlotError(f"cannot write {output}: {e.strerror or e}") from None
  except PlotError as e:
    print(f"plot_validation_curve: error: {e}", file=sys.stderr)
    return 1
  for (kind, scale), points in sorted(curves.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
    step, value = max(points.items())
    name = f"{kind}{'' if scale is None else f' x{scale}'}"
    print(f"{name}: {value:.3f} dB at step {step} ({len(points)} validations)")
  print(f"wrote {output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
