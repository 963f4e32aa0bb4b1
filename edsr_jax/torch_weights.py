"""Official EDSR / MDSR PyTorch weights as the parameters of `edsr_jax.models`.

`read_state_dict` reads a `.pt` file with the safe reader (`edsr_jax.torch_pickle`);
`detect_architecture` reads the network's sizes from the tensor shapes (with optional
arguments that must agree with them), `check_state_dict` insists on exactly the official
keys and shapes and the standard DIV2K mean shift (at the file's precision: float16 and
bfloat16 files are imported too), and `to_flax_params` gives the
parameter tree of `edsr_jax.models` (OIHW conv weights become HWIO kernels). Every
problem is a `WeightsError` in these functions' terms (`import_torch` restates them as
its flags).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from edsr_jax import errors, models, torch_pickle


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: numpy array} of a `.pt` state_dict; WeightsError naming the file if unreadable."""
  try:
    return torch_pickle.load_state_dict(path)
  except torch_pickle.TorchFileError as e:
    raise errors.WeightsError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the weights determine: network, blocks, features and scale(s)."""

  model: str  # "edsr" or "mdsr"
  num_blocks: int
  num_features: int
  scales: tuple[int, ...]  # EDSR: (scale,); MDSR: one per branch, in the file's order

  def describe(self) -> str:
    scales = ", ".join(f"x{s}" for s in self.scales)
    return (
      f"{self.model.upper()}, {self.num_blocks} residual blocks, "
      f"{self.num_features} features, {scales}"
    )


def _contradiction(argument: str, value, detail: str) -> errors.WeightsError:
  """`argument` (given as `value`; None: named alone) contradicts the file: `detail`."""
  given = argument if value is None else f"{argument}={value!r}"
  return errors.WeightsError(given + detail, argument, value, detail)


def _shape(state, key) -> tuple[int, ...] | None:
  return tuple(state[key].shape) if key in state else None


def _upsampler_scale(state, prefix: str, features: int) -> int:
  """x2 / x3 / x4 from an official Upsampler's first conv `<prefix>0.weight`."""
  key = f"{prefix}0.weight"
  shape = _shape(state, key)
  if shape is None:
    raise errors.WeightsError(f"missing tensor {key} (the upsampler's first conv)")
  if shape[0] == 9 * features:
    return 3
  if shape[0] == 4 * features:
    return 4 if f"{prefix}2.weight" in state else 2
  raise errors.WeightsError(
    f"{key} has shape {shape}: its {shape[0]} output channels are neither 4 x {features} "
    f"(an x2 stage) nor 9 x {features} (x3) features, so it is not an EDSR upsampler"
  )


def _scale_shape_note(scale: int, features: int) -> str:
  out = 9 * features if scale == 3 else 4 * features
  second = "a second x2 stage tail.0.2.weight" if scale == 4 else "no tail.0.2.weight"
  return f"tail.0.0.weight of shape ({out}, {features}, 3, 3) and {second}"


def detect_architecture(
  state: Mapping[str, np.ndarray],
  *,
  model: str | None = None,
  scale: int | None = None,
  scales: tuple[int, ...] | None = None,
  num_blocks: int | None = None,
  num_features: int | None = None,
) -> Architecture:
  """Reads the network from the tensor shapes; each given argument must agree with them.

  Raises WeightsError naming the tensor (and its shape) that contradicts an
  argument, or that no official network has.
  """
  head = _shape(state, "head.0.weight")
  if head is None or len(head) != 4:
    raise errors.WeightsError(
      f"no conv weight head.0.weight (found {head}): not an official EDSR / MDSR state_dict; "
      f"its first keys are {list(state)[:5]}"
    )
  features = head[0]
  if head[1] != 3:
    raise errors.WeightsError(
      f"head.0.weight has shape {head}: {head[1]} input channels, the networks here take RGB (3)"
    )
  if num_features is not None and num_features != features:
    raise _contradiction(
      "num_features", num_features, f", but head.0.weight has shape {head}: {features} features"
    )

  mdsr_keys = [k for k in state if k.startswith("pre_process.")]
  detected_model = "mdsr" if mdsr_keys else "edsr"
  if model is not None and model != detected_model:
    if model == "edsr":
      raise _contradiction(
        "model",
        model,
        f", but the file has MDSR tensor {mdsr_keys[0]} of shape "
        f"{_shape(state, mdsr_keys[0])} (EDSR has no pre_process stage)",
      )
    raise _contradiction(
      "model",
      model,
      ", but the file has no pre_process.* tensors (MDSR's per-scale stages); "
      f"tail.0.0.weight of shape {_shape(state, 'tail.0.0.weight')} is an EDSR upsampler",
    )

  blocks = 0
  while f"body.{blocks}.body.0.weight" in state:
    blocks += 1
  if num_blocks is not None and num_blocks != blocks:
    last = f"body.{blocks}.weight"
    if num_blocks > blocks:
      detail = f"there is no body.{blocks}.body.0.weight"
    else:
      extra = f"body.{num_blocks}.body.0.weight"
      detail = f"{extra} of shape {_shape(state, extra)} is a residual block"
    raise _contradiction(
      "num_blocks",
      num_blocks,
      f", but the file has {blocks} residual blocks: {detail}, "
      f"and {last} of shape {_shape(state, last)} is the body's final conv",
    )
  if blocks == 0:
    raise errors.WeightsError("no residual blocks (no body.0.body.0.weight)")

  if detected_model == "edsr":
    if scales is not None:
      raise _contradiction("scales", None, " is for MDSR; this EDSR file has one scale")
    found = _upsampler_scale(state, "tail.0.", features)
    if scale is not None and scale != found:
      raise _contradiction(
        "scale",
        scale,
        f", but tail.0.0.weight has shape {_shape(state, 'tail.0.0.weight')}"
        f"{' with a second stage tail.0.2.weight' if found == 4 else ''}, an x{found} "
        f"upsampler; x{scale} needs {_scale_shape_note(scale, features)}",
      )
    return Architecture("edsr", blocks, features, (found,))

  if scale is not None:
    raise _contradiction("scale", None, " is for EDSR; this MDSR file holds several scales")
  found_scales = []
  while f"upsample.{len(found_scales)}.0.weight" in state:
    i = len(found_scales)
    found_scales.append(_upsampler_scale(state, f"upsample.{i}.", features))
  found_scales = tuple(found_scales)
  if not found_scales or len(set(found_scales)) != len(found_scales):
    raise errors.WeightsError(
      f"MDSR upsamplers give scales {found_scales} (from upsample.<i>.0.weight); "
      "expected distinct scales, one per branch"
    )
  if scales is not None and tuple(scales) != found_scales:
    detail = ", ".join(
      f"upsample.{i}.0.weight {_shape(state, f'upsample.{i}.0.weight')} -> x{s}"
      for i, s in enumerate(found_scales)
    )
    raise _contradiction("scales", tuple(scales), f", but the file's upsamplers are {detail}")
  return Architecture("mdsr", blocks, features, found_scales)


def _conv_keys(prefix: str, out_ch: int, in_ch: int, k: int) -> dict[str, tuple[int, ...]]:
  return {f"{prefix}.weight": (out_ch, in_ch, k, k), f"{prefix}.bias": (out_ch,)}


def _upsampler_keys(prefix: str, scale: int, f: int) -> dict[str, tuple[int, ...]]:
  out = {}
  for i, r in enumerate(models.UPSAMPLE_STAGES[scale]):  # conv at 0, 2 (PixelShuffle at 1, 3)
    out.update(_conv_keys(f"{prefix}.{2 * i}", r * r * f, f, 3))
  return out


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
  """{state_dict key: shape} of the official network `arch`."""
  f, b = arch.num_features, arch.num_blocks
  out = {}
  out.update(_conv_keys("sub_mean", 3, 3, 1))
  out.update(_conv_keys("add_mean", 3, 3, 1))
  out.update(_conv_keys("head.0", f, 3, 3))
  if arch.model == "mdsr":
    for s in range(len(arch.scales)):
      for k in range(2):
        for c in (0, 2):
          out.update(_conv_keys(f"pre_process.{s}.{k}.body.{c}", f, f, 5))
  for i in range(b):
    for c in (0, 2):
      out.update(_conv_keys(f"body.{i}.body.{c}", f, f, 3))
  out.update(_conv_keys(f"body.{b}", f, f, 3))
  if arch.model == "edsr":
    out.update(_upsampler_keys("tail.0", arch.scales[0], f))
    out.update(_conv_keys("tail.1", 3, f, 3))
  else:
    for i, s in enumerate(arch.scales):
      out.update(_upsampler_keys(f"upsample.{i}", s, f))
    out.update(_conv_keys("tail.0", 3, f, 3))
  return out


def _listing(keys, limit: int = 12) -> str:
  keys = sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def check_state_dict(state: Mapping[str, np.ndarray], arch: Architecture) -> None:
  """Exactly the official keys and shapes of `arch`, finite float tensors, standard mean
  shift."""
  expected = expected_shapes(arch)
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  problems = []
  if missing:
    problems.append(f"missing tensors: {_listing(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {_listing(unexpected)}")
  for key, shape in expected.items():
    if key in state and tuple(state[key].shape) != shape:
      problems.append(f"{key} has shape {tuple(state[key].shape)}, {arch.describe()} needs {shape}")
  if problems:
    raise errors.WeightsError(f"the file does not hold {arch.describe()}: " + "; ".join(problems))
  for key in expected:
    if state[key].dtype.kind != "f":
      raise errors.WeightsError(f"{key} has dtype {state[key].dtype}, not floating point")
  for key in expected:
    values = np.asarray(state[key])
    nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if nan or inf:
      found = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
      raise errors.WeightsError(
        f"tensor {key} holds {found} value(s) of {values.size}: these weights are not finite "
        "(saved from a diverged training?) and would give a broken network"
      )
  _check_mean_shift(state)


# Significand bits (the stored ones) of the float dtypes a weights file can hold.
_MANTISSA_BITS = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}


def source_dtype(state: Mapping[str, np.ndarray], key: str) -> str:
  """The dtype of tensor `key` in the file (a bfloat16 tensor is read as float32)."""
  return getattr(state, "dtypes", {}).get(key) or state[key].dtype.name


def round_to(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
  """(`values` rounded to the nearest of `dtype` (ties to even), one unit in the last
  place of `dtype` at each), as float64: what a value stored at that precision can be."""
  bits = _MANTISSA_BITS.get(dtype, _MANTISSA_BITS["float32"])
  fraction, exponent = np.frexp(np.asarray(values, np.float64))  # fraction in [0.5, 1)
  rounded = np.ldexp(np.round(np.ldexp(fraction, bits + 1)), exponent - bits - 1)
  return rounded, np.ldexp(np.ones_like(rounded), exponent - bits - 1)


def _check_mean_shift(state: Mapping[str, np.ndarray]) -> None:
  # Our model applies the DIV2K mean as a constant; weights trained with another mean,
  # std or rgb_range would compute a different function under it. A file saved at a lower
  # precision (`.half()`: float16, bfloat16) holds the constants rounded to it, so they
  # are compared at the file's precision (within half a unit in its last place).
  mean = np.asarray(models.DIV2K_RGB_MEAN, np.float32) * np.float32(models.RGB_RANGE)
  eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
  for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
    for key, want in ((f"{name}.weight", eye), (f"{name}.bias", sign * mean)):
      dtype = source_dtype(state, key)
      expected, ulp = round_to(want, dtype)
      got = state[key].astype(np.float64)
      if not np.all(np.abs(got - expected) <= np.maximum(1e-3, ulp / 2)):
        precision = "" if dtype == "float32" else f" at {dtype} precision"
        raise errors.WeightsError(
          f"{key} is {np.round(got.reshape(-1), 4).tolist()} ({dtype}), but this project's "
          f"models use the standard DIV2K mean shift "
          f"({np.round(expected.reshape(-1), 4).tolist()}{precision}: "
          f"rgb_mean {models.DIV2K_RGB_MEAN} x rgb_range {models.RGB_RANGE:g}, std 1); "
          "weights trained with another mean, std or rgb_range would compute a different "
          "function here, so they are refused"
        )


def _conv(state, prefix: str) -> dict[str, np.ndarray]:
  weight = state[f"{prefix}.weight"].astype(np.float32)
  return {
    "kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
    "bias": state[f"{prefix}.bias"].astype(np.float32),
  }


def _res_blocks(state, prefix: str, count: int) -> dict:
  return {
    f"block{i}": {
      "conv1": _conv(state, f"{prefix}.{i}.body.0"),
      "conv2": _conv(state, f"{prefix}.{i}.body.2"),
    }
    for i in range(count)
  }


def _upsampler(state, prefix: str, scale: int) -> dict:
  stages = len(models.UPSAMPLE_STAGES[scale])
  return {f"conv{i}": _conv(state, f"{prefix}.{2 * i}") for i in range(stages)}


def to_flax_params(state: Mapping[str, np.ndarray], arch: Architecture) -> dict:
  """The `edsr_jax.models` parameter tree (float32, whatever the file's float dtype) of a
  checked official state_dict."""
  body = _res_blocks(state, "body", arch.num_blocks)
  body["conv"] = _conv(state, f"body.{arch.num_blocks}")
  params = {"head": _conv(state, "head.0"), "body": body}
  if arch.model == "edsr":
    params["upsample"] = _upsampler(state, "tail.0", arch.scales[0])
    params["tail"] = _conv(state, "tail.1")
    return params
  for i, s in enumerate(arch.scales):
    params[f"pre_process_x{s}"] = _res_blocks(state, f"pre_process.{i}", 2)
    params[f"upsample_x{s}"] = _upsampler(state, f"upsample.{i}", s)
  params["tail"] = _conv(state, "tail.0")
  return params


def default_res_scale(arch: Architecture) -> float | None:
  """res_scale of the official network of this size (not stored in the weights), or None.

  EDSR: 0.1 with 256 features (full), 1.0 with 64 (baseline); MDSR: 1.0 (both released
  MDSRs have 64 features and unscaled blocks). None for any other size: it must be given.
  """
  if arch.num_features == 64:
    return 1.0
  if arch.model == "edsr" and arch.num_features == 256:
    return 0.1
  return None
