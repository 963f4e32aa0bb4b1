"""optim.Adam: optax's Adam where every parameter trains, PyTorch's where some do not (an
MDSR step leaves the other scales' branches, and their moments, untouched)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edsr_jax import optim


def test_adam_with_all_parameters_active_is_optax_adam():
  params = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4)}
  schedule = optax.exponential_decay(1e-2, 3, 0.5, staircase=True)
  ours, ref = optim.Adam(schedule), optax.adam(schedule)
  p1, s1 = params, ours.init(params)
  p2, s2 = params, ref.init(params)
  rng = np.random.default_rng(0)
  for step in range(7):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    p1, s1 = ours.update(grads, s1, p1, step)
    updates, s2 = ref.update(grads, s2, p2)
    p2 = optax.apply_updates(p2, updates)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_adam_skips_inactive_parameters_like_pytorch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  init = {"shared": rng.normal(size=3), "x2": rng.normal(size=2), "x3": rng.normal(size=2)}
  t_params = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in init.items()}
  t_opt = torch.optim.Adam(t_params.values(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
  ours = optim.Adam(lambda step: 1e-2)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}
  state = ours.init(params)
  for step, branch in enumerate(["x2", "x2", "x3", "x2", "x3", "x3", "x2"]):
    grads = {k: rng.normal(size=v.shape) for k, v in init.items()}
    t_opt.zero_grad(set_to_none=True)  # the unused branch has no gradient at all
    for k in ("shared", branch):
      t_params[k].grad = torch.tensor(grads[k], dtype=torch.float64)
    t_opt.step()
    active = {k: k in ("shared", branch) for k in params}
    params, state = ours.update(
      {k: jnp.asarray(g, jnp.float32) for k, g in grads.items()}, state, params, step, active
    )
  for k in init:
    np.testing.assert_allclose(params[k], t_params[k].detach().numpy(), rtol=1e-5, atol=1e-6)
  assert {k: int(v) for k, v in state.count.items()} == {"shared": 7, "x2": 4, "x3": 3}
