"""EDSR and MDSR (Lim et al., CVPR 2017 workshops) as Flax Linen modules.

The modules compute the same function as the official PyTorch networks, so that released
weights can be imported and numbers compared:

- inputs and outputs are NHWC RGB on the 0..255 scale; the DIV2K mean is subtracted at
  the input and added back at the output (a fixed shift, not a parameter);
- 3x3 convolutions with bias and zero padding k // 2 ('SAME' for odd kernels);
- pixel shuffle uses PyTorch's channel order `(c, r1, r2)`, not TensorFlow's
  depth_to_space order `(r1, r2, c)`.

`dtype` is the compute type (e.g. bfloat16 on TPU); parameters are always float32.
"""

import functools
import pathlib
import platform
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# DIV2K RGB mean on the 0..1 scale, from the official code (`rgb_mean`).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_RANGE = 255.0
# Per scale, the pixel-shuffle factors of the upsampler's stages (x4: two x2 stages). The
# official networks' layout; inference (receptive field) and the weights import read it.
UPSAMPLE_STAGES = {2: (2,), 3: (3,), 4: (2, 2)}
SCALES = tuple(UPSAMPLE_STAGES)


def cpu_has_native_bf16(cpuinfo: str | None = None, machine: str | None = None) -> bool:
  """Whether the host CPU computes bfloat16 dot products in hardware.

  x86-64: AVX512_BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and
  later) or AMX-BF16; aarch64: the BF16 extension (Neoverse V1/N2/V2: Graviton3/4, Grace).
  Read from /proc/cpuinfo; anything unreadable counts as no.
  """
  machine = (machine or platform.machine()).lower()
  if cpuinfo is None:
    try:
      cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
      return False
  flags = set()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip().lower() in ("flags", "features"):
      flags.update(value.lower().split())
  if machine in ("x86_64", "amd64"):
    return bool(flags & {"avx512_bf16", "amx_bf16"})
  if machine in ("aarch64", "arm64"):
    return "bf16" in flags
  return False


@functools.cache
def compute_dtype(name: str) -> jnp.dtype:
  """`config.model.dtype` as a JAX dtype.

  "auto" is bfloat16 when JAX runs on a CPU that computes it natively and float32
  everywhere else (GPU and TPU keep the paper's float32 unless asked); parameters, Adam
  and the loss stay float32. No preset uses it: on a CPU it matched float32's PSNR but
  was not reliably faster (benchmarks/README.md has the measurement).
  """
  if name == "auto":
    native = jax.default_backend() == "cpu" and cpu_has_native_bf16()
    return jnp.dtype(jnp.bfloat16 if native else jnp.float32)
  return jnp.dtype(name)


def _reshape_keep_batch_sharding(x: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
  # On a mesh with Explicit axes JAX cannot infer the sharding of a reshape that merges
  # dimensions; only the batch dimension is ever sharded here, so say that it stays.
  sharding = jax.typeof(x).sharding
  if sharding.mesh.empty or not sharding.spec:
    return x.reshape(shape)
  return jnp.reshape(x, shape, out_sharding=NamedSharding(sharding.mesh, P(sharding.spec[0])))


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """Rearranges (B, H, W, C*r*r) into (B, H*r, W*r, C) in PyTorch's channel order."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = _reshape_keep_batch_sharding(x, (b, h, w, c, r, r))
  x = x.transpose(0, 1, 4, 2, 5, 3)  # b, h, r1, w, r2, c
  return _reshape_keep_batch_sharding(x, (b, h * r, w * r, c))


def _conv(features: int, kernel: int, dtype: Any, name: str | None = None) -> nn.Conv:
  # PyTorch's default init (kaiming_uniform with a=sqrt(5)) is uniform(+-1/sqrt(fan_in)),
  # i.e. variance 1/(3 fan_in); matching it keeps the training recipe's learning rate sane.
  return nn.Conv(
    features,
    (kernel, kernel),
    padding="SAME",
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
    bias_init=nn.initializers.zeros,
    name=name,
  )


class ResBlock(nn.Module):
  """conv -> ReLU -> conv, scaled by `res_scale`, plus the input."""

  features: int
  kernel_size: int = 3
  res_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _conv(self.features, self.kernel_size, self.dtype, name="conv1")(x)
    y = nn.relu(y)
    y = _conv(self.features, self.kernel_size, self.dtype, name="conv2")(y)
    if self.res_scale != 1.0:
      y = y * self.res_scale
    return x + y


def shuffle_order(features: int, r: int) -> jnp.ndarray:
  """Output channel k of the conv in channels-minor order (i, j, c) is PyTorch's channel
  c*r*r + i*r + j: the permutation that makes PyTorch's pixel shuffle a depth-to-space."""
  i, j, c = jnp.meshgrid(jnp.arange(r), jnp.arange(r), jnp.arange(features), indexing="ij")
  return (c * r * r + i * r + j).reshape(-1)


class ShuffleConv(nn.Module):
  """A 3x3 conv to F*r*r channels followed by PyTorch's pixel shuffle by r.

  Its parameters are exactly an `nn.Conv`'s (same names, shapes, init, PyTorch channel
  order), so checkpoints and imported weights are unchanged. It computes the same
  function as `pixel_shuffle(conv(x), r)`, but permutes the kernel's output channels
  (a few kB) so that the conv writes them in (i, j, c) order: the shuffle then keeps the
  channels as the minor (fastest) dimension and only interleaves rows and columns. The
  TPU compiler showed the PyTorch-order shuffle, which moves channels out of the minor
  dimension, costing the EDSR baseline x2 step 8% more temporaries and 4% more HBM
  traffic at 16 patches per chip; at x4 (two stages) and at 2 patches per chip the
  difference is a few percent the other way (benchmarks/README.md, "Compiled for TPU").
  """

  features: int
  r: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    r, f = self.r, self.features
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # as _conv
    kernel = self.param("kernel", init, (3, 3, x.shape[-1], f * r * r), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (f * r * r,), jnp.float32)
    order = shuffle_order(f, r)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel[..., order], bias[order], dtype=self.dtype)
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = y + bias
    b, h, w, _ = y.shape
    y = _reshape_keep_batch_sharding(y, (b, h, w, r, r, f))
    y = y.transpose(0, 1, 3, 2, 4, 5)  # b, h, i, w, j, c
    return _reshape_keep_batch_sharding(y, (b, h * r, w * r, f))


class Upsampler(nn.Module):
  """x2 / x3: conv to r*r*F channels + pixel shuffle; x4: two x2 stages. No activation."""

  scale: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, r in enumerate(UPSAMPLE_STAGES[self.scale]):
      x = ShuffleConv(self.features, r, self.dtype, name=f"conv{i}")(x)
    return x


class Body(nn.Module):
  """B residual blocks and a final conv, with the global skip connection."""

  num_blocks: int
  features: int
  res_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = x
    for i in range(self.num_blocks):
      y = ResBlock(self.features, 3, self.res_scale, self.dtype, name=f"block{i}")(y)
    y = _conv(self.features, 3, self.dtype, name="conv")(y)
    return x + y


class PreProcess(nn.Module):
  """MDSR's per-scale input stage: two residual blocks with 5x5 kernels."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = ResBlock(self.features, 5, 1.0, self.dtype, name=f"block{i}")(x)
    return x


def _shift_mean(x, sign: float, dtype):
  mean = jnp.asarray(DIV2K_RGB_MEAN, jnp.float32) * RGB_RANGE
  return (x.astype(jnp.float32) + sign * mean).astype(dtype)


class EDSR(nn.Module):
  """Single-scale EDSR. `__call__(lr)`: (B, h, w, 3) in 0..255 -> (B, h*s, w*s, 3)."""

  scale: int = 2
  num_blocks: int = 16
  num_features: int = 64
  res_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, scale: int | None = None):
    if scale is not None and scale != self.scale:
      raise ValueError(f"this EDSR was built for x{self.scale}, asked for x{scale}")
    x = _shift_mean(x, -1.0, self.dtype)
    x = _conv(self.num_features, 3, self.dtype, name="head")(x)
    x = Body(self.num_blocks, self.num_features, self.res_scale, self.dtype, name="body")(x)
    x = Upsampler(self.scale, self.num_features, self.dtype, name="upsample")(x)
    x = _conv(3, 3, self.dtype, name="tail")(x)
    return _shift_mean(x, 1.0, jnp.float32)


class MDSR(nn.Module):
  """Multi-scale MDSR: shared head/body/tail, per-scale pre-process and upsampler.

  `__call__(lr, scale)` runs only the branch of `scale` (a Python int, so each scale is
  its own compiled program). During `init` every branch is run once so that all scales'
  parameters exist.
  """

  scales: Sequence[int] = SCALES
  num_blocks: int = 16
  num_features: int = 64
  res_scale: float = 1.0
  dtype: Any = jnp.float32

  def setup(self):
    f, dt = self.num_features, self.dtype
    self.head = _conv(f, 3, dt)
    self.pre_process = {f"x{s}": PreProcess(f, dt) for s in self.scales}
    self.body = Body(self.num_blocks, f, self.res_scale, dt)
    self.upsample = {f"x{s}": Upsampler(s, f, dt) for s in self.scales}
    self.tail = _conv(3, 3, dt)

  def __call__(self, x, scale: int):
    if scale not in self.scales:
      raise ValueError(f"scale must be one of {tuple(self.scales)}, got {scale!r}")
    x = self.head(_shift_mean(x, -1.0, self.dtype))
    if self.is_initializing():
      for s in self.scales:  # create every branch's parameters
        if s != scale:
          self.upsample[f"x{s}"](self.body(self.pre_process[f"x{s}"](x)))
    x = self.body(self.pre_process[f"x{scale}"](x))
    x = self.tail(self.upsample[f"x{scale}"](x))
    return _shift_mean(x, 1.0, jnp.float32)


def active_params(params, scale: int):
  """A pytree of Python bools: the parameters that take part in a forward pass at `scale`.

  MDSR uses its shared head/body/tail and only `scale`'s pre-process and upsampler; every
  EDSR parameter is always active.
  """
  branches = ("pre_process_x", "upsample_x")
  own = (f"pre_process_x{scale}", f"upsample_x{scale}")

  def mark(subtree, on: bool):
    return jax.tree.map(lambda _: on, subtree)

  return {k: mark(v, not k.startswith(branches) or k in own) for k, v in params.items()}


def create_model(model_config, dtype: Any = jnp.float32) -> nn.Module:
  """Builds EDSR or MDSR from `config.model` (see configs/)."""
  name = model_config.name
  common = dict(
    num_blocks=model_config.num_blocks,
    num_features=model_config.num_features,
    res_scale=model_config.res_scale,
    dtype=dtype,
  )
  if name == "edsr":
    (scale,) = model_config.scales
    return EDSR(scale=scale, **common)
  if name == "mdsr":
    return MDSR(scales=tuple(model_config.scales), **common)
  raise ValueError(f"config.model.name must be 'edsr' or 'mdsr', got {name!r}")


def model_scales(model_config) -> tuple[int, ...]:
  """The scales a model config serves (`model.scales`: one for EDSR, several for MDSR)."""
  return tuple(model_config.scales)
