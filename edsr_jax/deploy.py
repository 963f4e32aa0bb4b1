"""A trained network as a SavedModel, a TFLite model or an ONNX model, for serving far
from JAX; and `load_onnx`, which upscales through an exported ONNX model with exactly
the tiling of `inference.Upscaler`.

  from edsr_jax import checkpoint, deploy
  restored = checkpoint.load_params("pretrained/edsr_291_x2")
  deploy.export(restored, "onnx", "edsr_x2.onnx")

Each artifact computes `Upscaler.upscale`'s function of one scale: uint8 RGB
(batch, height, width, 3), every size free, to uint8 (batch, height*s, width*s, 3), the
network's output rounded as `upscale` rounds it (floor(x + 0.5), clipped to 0..255). The
mean shift is inside the graph. Each carries a JSON record (`RECORD_NAME`: the scale,
the input/output spec, the network's config, the checkpoint it came from, EMA or not,
the tiling halo): ONNX in its metadata_props, TFLite as a metadata buffer of the
flatbuffer, SavedModel in `assets.extra/edsr_jax.json`; `read_record` reads any of them.

Exporters are the ecosystem's own: jax2tf (native serialization: the StableHLO of the
jitted function inside an XlaCallModule op) for the SavedModel, with a
`serving_default` signature `lr` -> `sr`; the TFLite converter on that SavedModel (it
lowers the StableHLO to TFLite builtins); jax2onnx for ONNX (opset 23; the pixel
shuffle stays the network's rank-6 reshape and transpose, which onnxruntime, OpenCV's
dnn and LiteRT all run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from edsr_jax import checkpoint, errors, inference

FORMATS = ("savedmodel", "tflite", "onnx")
RECORD_NAME = "edsr_jax"  # the metadata key / buffer name / asset file stem
SAVEDMODEL_RECORD = os.path.join("assets.extra", f"{RECORD_NAME}.json")


def serving_function(upscaler: inference.Upscaler, scale: int):
  """uint8 (B, H, W, 3) -> uint8 (B, H*s, W*s, 3): the network with its weights inside,
  rounded as `Upscaler.upscale` rounds."""
  params = jax.tree.map(jnp.asarray, upscaler.params)  # constants of the traced graph
  model = upscaler.model

  def serve(lr):
    sr = model.apply({"params": params}, lr.astype(jnp.float32), scale)
    # metrics.round_to_uint8's rounding, with ops every converter lowers (its `// 1`
    # becomes a round_nearest_afz that TFLite has no builtin for).
    return jnp.floor(jnp.clip(sr.astype(jnp.float32), 0.0, 255.0) + 0.5).astype(jnp.uint8)

  return serve


def record(restored, scale: int, fmt: str) -> dict:
  """What the artifact is: its input/output and where its weights came from."""
  model = json.loads(json.dumps(restored.config.model.to_dict()))
  return {
    "format": fmt,
    "scale": scale,
    "input": {
      "name": "lr",
      "dtype": "uint8",
      "shape": ["batch", "height", "width", 3],
      "channels": "RGB",
      "range": [0, 255],
    },
    "output": {
      "name": "sr",
      "dtype": "uint8",
      "shape": ["batch", f"height*{scale}", f"width*{scale}", 3],
      "channels": "RGB",
      "range": [0, 255],
      "rounding": "floor(x + 0.5), clipped",
    },
    "mean_shift": "inside the graph (the network's RGB mean, DIV2K's)",
    "model": model,
    "halo": inference.receptive_field_radius(restored.config.model, scale),
    **provenance(restored),
  }


def provenance(restored) -> dict:
  """Where the weights were trained: the training run's step directory, its step and
  whether they are its EMA; for an export or import (`export.json`), what that says."""
  exported = checkpoint.export_record(restored.step_dir) or {}
  return {
    "source": exported.get("source", str(restored.step_dir)),
    "step": exported.get("step", restored.step),
    "ema": exported.get("ema", restored.ema),
  }


def _upscaler(restored) -> inference.Upscaler:
  return inference.Upscaler(
    restored.config,
    restored.params,
    dtype=jnp.float32,
    source=str(restored.step_dir),
    ema=restored.ema,
  )


def _write_savedmodel(serve, target: str, info: dict) -> None:
  # Deferred: TensorFlow takes seconds to import, and only exports need it.
  import jax.experimental.jax2tf as jax2tf
  import tensorflow as tf

  converted = jax2tf.convert(serve, polymorphic_shapes=["(b, h, w, 3)"], with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(
    lambda lr: {"sr": converted(lr)},
    autograph=False,
    input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="lr")],
  )
  tf.saved_model.save(module, target, signatures={"serving_default": module.serve})
  extra = os.path.join(target, SAVEDMODEL_RECORD)
  os.makedirs(os.path.dirname(extra), exist_ok=True)
  with open(extra, "w") as f:
    f.write(json.dumps(info, indent=2) + "\n")


def _write_tflite(serve, target: str, info: dict) -> None:
  # Deferred: TensorFlow, as above.
  import tensorflow as tf
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils

  with tempfile.TemporaryDirectory(prefix="edsr_jax_savedmodel_") as saved:
    _write_savedmodel(serve, saved, info)
    flat = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(json.dumps(info).encode(), np.uint8)
  model.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name, entry.buffer = RECORD_NAME, len(model.buffers) - 1
  model.metadata = [*(model.metadata or []), entry]
  with open(target, "wb") as f:
    f.write(flatbuffer_utils.convert_object_to_bytearray(model))


def _write_onnx(serve, target: str, info: dict) -> None:
  # Deferred: jax2onnx imports all its plugins (seconds); only ONNX exports need it.
  import jax2onnx
  import onnx

  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("batch, height, width, 3"), jnp.uint8)
  with _quiet("jax2onnx", "onnx_ir"):
    proto = jax2onnx.to_onnx(
      serve, [spec], model_name="edsr_jax", input_names=["lr"], output_names=["sr"]
    )
  onnx.helper.set_model_props(proto, {RECORD_NAME: json.dumps(info)})
  onnx.save(proto, target)


@contextlib.contextmanager
def _quiet(*names: str):
  """Drops the warnings of these loggers: jax2onnx imports the example plugins of every
  library it supports and logs a traceback for each one not installed (equinox, dm-pix:
  not our network's), and onnx_ir warns about untyped shape constants it serialises."""
  loggers = [logging.getLogger(name) for name in names]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels, strict=True):
      logger.setLevel(level)


_WRITERS = {"savedmodel": _write_savedmodel, "tflite": _write_tflite, "onnx": _write_onnx}


def export(
  restored, fmt: str, output: str | os.PathLike, scale: int | None = None, overwrite: bool = False
) -> dict:
  """Writes the network of `restored` (`checkpoint.load_params`) at `scale` as `fmt` to
  `output` (a folder for savedmodel, a file otherwise); returns its record.

  The artifact is written beside `output` under a temporary name and renamed into place
  once complete: a failed or interrupted export leaves nothing, and an existing
  `output` is replaced only with `overwrite` (else an errors.UserError names it).
  """
  if fmt not in FORMATS:
    raise errors.UserError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
  upscaler = _upscaler(restored)
  scale = upscaler.resolve_scale(scale)
  target = pathlib.Path(output).absolute()
  if os.path.lexists(target) and not overwrite:
    raise errors.UserError(f"{output} exists; refusing to overwrite it")
  info = record(restored, scale, fmt)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.write-tmp-{os.getpid()}")
  try:
    _WRITERS[fmt](serving_function(upscaler, scale), str(tmp), info)
    if target.is_dir() and not target.is_symlink():  # a SavedModel replaced: moved aside
      aside = tmp.with_name(f"{tmp.name}-old")
      os.rename(target, aside)
      os.rename(tmp, target)
      shutil.rmtree(aside)
    else:
      os.replace(tmp, target)  # atomic for a file
  except Exception as e:
    if isinstance(e, OSError):
      raise errors.UserError(
        f"{output}: cannot write it: {e.strerror or errors.one_line(e)}"
      ) from None
    raise errors.UserError(
      f"{output}: the {fmt} converter failed: {errors.one_line(e, innermost=True)}"
    ) from e
  finally:
    with contextlib.suppress(OSError):
      (shutil.rmtree if tmp.is_dir() else os.unlink)(tmp)
  return info


def read_record(path: str | os.PathLike) -> dict:
  """The record an exported artifact carries (any of the three formats)."""
  path = pathlib.Path(path)
  try:
    if path.is_dir():
      return json.loads((path / SAVEDMODEL_RECORD).read_text())
    data = path.read_bytes()
    if data[4:8] == b"TFL3":
      # Deferred: TensorFlow, for its flatbuffer reader.
      from tensorflow.lite.tools import flatbuffer_utils

      model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
      for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == RECORD_NAME:
          return json.loads(bytes(model.buffers[entry.buffer].data).decode())
      raise ValueError("no edsr_jax metadata in it")
    # Deferred: onnx, needed only to read ONNX files.
    import onnx

    props = {p.key: p.value for p in onnx.load_model_from_string(data).metadata_props}
    return json.loads(props[RECORD_NAME])
  except (OSError, ValueError, KeyError, IndexError) as e:
    raise errors.UserError(
      f"{path}: not a model exported by edsr_jax ({errors.one_line(e)})"
    ) from None


def load_onnx(path: str | os.PathLike, providers=("CPUExecutionProvider",)):
  """An `inference.Upscaler` whose network is the exported ONNX model `path`, run by
  onnxruntime: the same tiles, batches and output as the JAX network (no self-ensemble)."""
  # Deferred: onnxruntime, needed only to run ONNX files.
  import onnxruntime

  info = read_record(path)
  if info.get("format") != "onnx":
    raise errors.UserError(f"{path}: a {info.get('format')} export, not ONNX")
  session = onnxruntime.InferenceSession(os.fspath(path), providers=list(providers))
  # The network's section is all of the config the Upscaler reads (its tiling, its repr).
  config = ml_collections.ConfigDict({"model": info["model"]})
  upscaler = inference.Upscaler(config, params=None, source=os.fspath(path))
  upscaler.scales = (info["scale"],)

  def forward(params, batch, *, scale, self_ensemble, quantize):
    del params
    if self_ensemble or not quantize or scale != info["scale"]:
      raise ValueError("the ONNX model computes one scale, uint8, without self-ensemble")
    return session.run(["sr"], {"lr": np.ascontiguousarray(batch, np.uint8)})[0]

  upscaler._forward = forward
  return upscaler
