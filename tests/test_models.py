"""The networks compute the official EDSR/MDSR function and have its parameter counts."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import config_lib, models

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"

# Trainable parameters of the official networks (EDSR_FACTS.md, mean shift excluded).
OFFICIAL_PARAMS = {
  "edsr.py:x2,baseline": 1_369_859,
  "edsr.py:x3,baseline": 1_554_499,
  "edsr.py:x4,baseline": 1_517_571,
  "edsr.py:x2": 40_729_603,
  "edsr.py:x3": 43_680_003,
  "edsr.py:x4": 43_089_923,
  "mdsr.py:baseline": 3_227_203,
  "mdsr.py": 7_953_987,
}


def load_config(spec):
  return config_lib.load_config_file(CONFIGS / spec)


def param_shapes(model, scale):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), scale))
  return variables["params"]


@pytest.mark.parametrize("preset", sorted(OFFICIAL_PARAMS))
def test_parameter_count_matches_official(preset):
  config = load_config(preset)
  model = models.create_model(config.model)
  params = param_shapes(model, models.model_scales(config.model)[0])
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == OFFICIAL_PARAMS[preset]


def test_pixel_shuffle_uses_pytorch_channel_order():
  b, h, w, c, r = 2, 3, 4, 5, 2
  x = np.random.default_rng(0).normal(size=(b, h, w, c * r * r)).astype(np.float32)
  out = np.asarray(models.pixel_shuffle(jnp.asarray(x), r))
  assert out.shape == (b, h * r, w * r, c)
  # PyTorch: out[c, h*r + i, w*r + j] = in[c*r*r + i*r + j, h, w] (channels last here).
  for ci in range(c):
    for i in range(r):
      for j in range(r):
        np.testing.assert_array_equal(out[:, i::r, j::r, ci], x[..., ci * r * r + i * r + j])


def _reference_edsr(params, x, scale, res_scale):
  """EDSR written out with lax convs and the explicit PyTorch pixel-shuffle index rule."""

  def conv(p, y):
    return (
      jax.lax.conv_general_dilated(
        y, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
      + p["bias"]
    )

  def shuffle(y, r):
    b, h, w, crr = y.shape
    c = crr // (r * r)
    out = jnp.zeros((b, h * r, w * r, c), y.dtype)
    for i in range(r):
      for j in range(r):
        out = out.at[:, i::r, j::r, :].set(y[..., i * r + j :: r * r])
    return out

  mean = jnp.array([0.4488, 0.4371, 0.4040]) * 255
  y = conv(params["head"], x - mean)
  skip = y
  body = params["body"]
  for k in range(len(body) - 1):
    blk = body[f"block{k}"]
    y = y + res_scale * conv(blk["conv2"], jax.nn.relu(conv(blk["conv1"], y)))
  y = conv(body["conv"], y) + skip
  stages = {2: [2], 3: [3], 4: [2, 2]}[scale]
  for k, r in enumerate(stages):
    y = shuffle(conv(params["upsample"][f"conv{k}"], y), r)
  return conv(params["tail"], y) + mean


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_matches_written_out_reference(scale):
  model = models.EDSR(scale=scale, num_blocks=2, num_features=8, res_scale=0.1)
  x = jax.random.uniform(jax.random.key(1), (2, 7, 5, 3)) * 255
  params = model.init(jax.random.key(0), x)["params"]
  # Non-zero biases, so that a bias left out would show.
  params = jax.tree.map(lambda p: p + 0.01, params)
  out = model.apply({"params": params}, x)
  assert out.shape == (2, 7 * scale, 5 * scale, 3)
  np.testing.assert_allclose(out, _reference_edsr(params, x, scale, 0.1), atol=1e-3)


def test_mdsr_runs_only_the_requested_branch():
  model = models.MDSR(num_blocks=1, num_features=8)
  x = jax.random.uniform(jax.random.key(1), (1, 6, 6, 3)) * 255
  params = model.init(jax.random.key(0), x, 2)["params"]
  assert {
    "pre_process_x2",
    "pre_process_x3",
    "pre_process_x4",
    "upsample_x2",
    "upsample_x3",
    "upsample_x4",
  } <= set(params)
  for scale in (2, 3, 4):
    assert model.apply({"params": params}, x, scale).shape == (1, 6 * scale, 6 * scale, 3)
  # Changing the x3 branch must not change the x2 output, and must change the x3 output.
  bumped = dict(params, pre_process_x3=jax.tree.map(lambda p: p + 1.0, params["pre_process_x3"]))
  np.testing.assert_array_equal(
    model.apply({"params": params}, x, 2), model.apply({"params": bumped}, x, 2)
  )
  assert not np.allclose(
    model.apply({"params": params}, x, 3), model.apply({"params": bumped}, x, 3)
  )
  with pytest.raises(ValueError, match="scale must be one of"):
    model.apply({"params": params}, x, 5)


def test_compute_dtype_keeps_float32_params():
  model = models.EDSR(scale=2, num_blocks=1, num_features=8, dtype=jnp.bfloat16)
  x = jnp.ones((1, 4, 4, 3)) * 100
  variables = model.init(jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  hlo = jax.jit(model.apply).lower(variables, x).as_text()
  assert "bf16" in hlo  # the convolutions really run in bfloat16
  out = model.apply(variables, x)
  assert out.dtype == jnp.float32
  full = models.EDSR(scale=2, num_blocks=1, num_features=8).apply(variables, x)
  np.testing.assert_allclose(out, full, rtol=0.05, atol=1.0)


ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n"
ZEN3_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_detection_reads_cpu_flags():
  assert models.cpu_has_native_bf16(ZEN4_FLAGS, "x86_64")
  assert not models.cpu_has_native_bf16(ZEN3_FLAGS, "x86_64")
  assert models.cpu_has_native_bf16(GRAVITON3, "aarch64")
  assert not models.cpu_has_native_bf16(ZEN4_FLAGS.replace("avx512_bf16", ""), "x86_64")
  assert not models.cpu_has_native_bf16("", "riscv64")


def test_auto_dtype_is_bfloat16_only_on_a_native_bf16_cpu():
  expected = jnp.bfloat16 if models.cpu_has_native_bf16() else jnp.float32
  assert jax.default_backend() == "cpu"
  assert models.compute_dtype("auto") == jnp.dtype(expected)
  assert models.compute_dtype("float32") == jnp.dtype(jnp.float32)
  demo = config_lib.load_config_file(str(REPO / "configs" / "demo.py"))
  demo.model.dtype = "auto"
  config_lib.validate(demo, 1)
  model = models.create_model(demo.model, models.compute_dtype(demo.model.dtype))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), 2)["params"]
  # Parameters stay float32 whatever the compute type.
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
