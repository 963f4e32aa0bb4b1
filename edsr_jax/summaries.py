"""Where training writes its TensorBoard summaries and progress.

CLU's writers (the Flax examples' choice) write through TensorFlow. Where TensorFlow is not
installed (a GPU image that ships JAX and PyTorch but no TensorFlow, a slim container),
training still writes the same scalars and images as TensorBoard event files, through the
`tensorboard` package's own event writer, and says so once. Without `tensorboard` either,
the values are only logged.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Mapping

import numpy as np
from absl import logging
from PIL import Image

from edsr_jax import checkpoint, errors

try:  # optional: without it (and without TensorFlow) summaries are only logged
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.plugins.image import metadata as image_metadata
  from tensorboard.plugins.scalar import metadata as scalar_metadata
  from tensorboard.summary.writer.event_file_writer import EventFileWriter
  from tensorboard.util import tensor_util
except ImportError:
  EventFileWriter = None

FALLBACK_WARNING = (
  "CLU's summary writer cannot be imported ({error}): TensorBoard events are written by the "
  "tensorboard package's own writer (scalars and images; hparams only logged)"
)


def create_writer(workdir, *, is_chief: bool):
  """CLU's default writer, or `EventWriter` where CLU or TensorFlow cannot be imported,
  as a `CheckedWriter`."""
  try:
    # Deferred: CLU's writers import TensorFlow (seconds), or fail where it is missing.
    from clu import metric_writers
  except ImportError as e:
    if is_chief:
      logging.warning(FALLBACK_WARNING.format(error=e))
    return CheckedWriter(EventWriter(workdir if is_chief else None), workdir)
  return CheckedWriter(
    metric_writers.create_default_writer(workdir, just_logging=not is_chief), workdir
  )


class SummaryError(errors.UserError):
  """The file system refused TensorBoard summaries (a full or read-only disk)."""


class CheckedWriter:
  """A writer whose failures to write (a full disk) are a `SummaryError` naming the folder
  and the reason, raised by the call that finds out (CLU's writers are asynchronous: the
  next write or `flush`), instead of a traceback or, on closing, nothing at all."""

  def __init__(self, writer, logdir):
    self._writer, self._logdir = writer, logdir

  def _checked(self, method, *args):
    try:
      return getattr(self._writer, method)(*args)
    except Exception as e:
      reason = checkpoint.os_error(e)
      if reason is None:
        raise
      raise SummaryError(f"cannot write TensorBoard summaries to {self._logdir}: {reason}") from e

  def write_scalars(self, step, scalars):
    self._checked("write_scalars", step, scalars)

  def write_images(self, step, images):
    self._checked("write_images", step, images)

  def write_hparams(self, hparams):
    self._checked("write_hparams", hparams)

  def flush(self):
    self._checked("flush")

  def close(self):
    self._checked("close")


def report_progress(*, num_train_steps: int, writer, every_steps: int):
  """CLU's ReportProgress (steps/s, ETA), or `StepRate` where CLU cannot be imported."""
  try:
    # Deferred, as above: it imports TensorFlow through CLU's writers.
    from clu import periodic_actions
  except ImportError:
    return StepRate(num_train_steps=num_train_steps, writer=writer, every_steps=every_steps)
  return periodic_actions.ReportProgress(
    num_train_steps=num_train_steps, writer=writer, every_steps=every_steps
  )


class EventWriter:
  """CLU's MetricWriter methods on tensorboard's event writer (no TensorFlow).

  Scalars and images are written as TensorFlow 2 summaries are (tensors tagged with the
  scalars / images plugin), so TensorBoard and CLU-written runs read the same.
  `logdir=None` only logs (the non-chief processes of a multi-host run).
  """

  def __init__(self, logdir):
    self._events = None
    if logdir is not None:
      if EventFileWriter is None:
        logging.warning("tensorboard is not installed either: summaries are only logged")
      else:
        self._events = EventFileWriter(os.fspath(logdir))

  def _write(self, step: int, values: list) -> None:
    if self._events is None or not values:
      return
    summary = summary_pb2.Summary(value=values)
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info(
      "[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
    )
    if self._events is None:
      return
    self._write(
      step,
      [
        summary_pb2.Summary.Value(
          tag=tag,
          tensor=tensor_util.make_tensor_proto(np.float32(value)),
          metadata=scalar_metadata.create_summary_metadata(display_name=tag, description=""),
        )
        for tag, value in scalars.items()
      ],
    )

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """`images`: {tag: [N, H, W, C] uint8}, as CLU takes them."""
    logging.info("[%d] images: %s", step, ", ".join(sorted(images)))
    if self._events is None:
      return
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      pngs = []
      for image in batch:
        buffer = io.BytesIO()
        pixels = image.astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
      height, width = batch.shape[1:3]
      tensor = np.array([str(width).encode(), str(height).encode(), *pngs], dtype=object)
      values.append(
        summary_pb2.Summary.Value(
          tag=tag,
          tensor=tensor_util.make_tensor_proto(tensor),
          metadata=image_metadata.create_summary_metadata(display_name=tag, description=""),
        )
      )
    self._write(step, values)

  def write_hparams(self, hparams: Mapping) -> None:
    logging.info("hparams: %s", ", ".join(f"{k}={v}" for k, v in sorted(hparams.items())))

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


class StepRate:
  """Logs steps/s and the time left every `every_steps`, and writes `steps_per_sec`."""

  def __init__(self, *, num_train_steps: int, writer, every_steps: int):
    self._total, self._writer, self._every = num_train_steps, writer, every_steps
    self._last = None  # (step, time) of the previous report

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self._last is None:  # the first step includes compiling: measure from there
      self._last = (step, now)
      return
    if step % self._every or step == self._last[0]:
      return
    rate = (step - self._last[0]) / (now - self._last[1])
    self._last = (step, now)
    left = (self._total - step) / rate / 60
    logging.info("%.1f steps/s, %.1f min left", rate, left)
    self._writer.write_scalars(step, {"steps_per_sec": rate})

  @contextlib.contextmanager
  def timed(self, name: str):
    start = time.monotonic()
    yield
    logging.info("%s took %.1f s", name, time.monotonic() - start)
