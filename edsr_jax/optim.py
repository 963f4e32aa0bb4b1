"""Adam with PyTorch's per-parameter semantics, which MDSR training depends on.

In PyTorch a parameter that gets no gradient in a step (MDSR's pre-process and
upsampler of the scales not drawn) is skipped by Adam: its moments do not decay, it
takes no momentum step, and its step count (hence its bias correction) does not advance.
optax.adam has one shared count and updates every leaf. Here each parameter has its own
count, and `update` leaves inactive parameters and their state bitwise unchanged. With
every parameter active (EDSR) this is plain Adam.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class AdamState:
  count: Any  # per-parameter number of updates received (int32 scalars)
  mu: Any
  nu: Any


@dataclasses.dataclass(frozen=True)
class Adam:
  learning_rate: optax.Schedule  # a function of the global step
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def init(self, params) -> AdamState:
    return AdamState(
      count=jax.tree.map(lambda _: jnp.zeros((), jnp.int32), params),
      mu=jax.tree.map(jnp.zeros_like, params),
      nu=jax.tree.map(jnp.zeros_like, params),
    )

  def update(self, grads, state: AdamState, params, step, active=None):
    """Returns (new params, new state). `active`: a pytree of Python bools, or None (all)."""
    lr = self.learning_rate(step)
    if active is None:
      active = jax.tree.map(lambda _: True, params)

    def leaf(is_active, g, p, count, mu, nu):
      if not is_active:  # decided at trace time: no computation, buffers pass through
        return p, count, mu, nu
      count = count + 1
      mu = self.b1 * mu + (1 - self.b1) * g
      nu = self.b2 * nu + (1 - self.b2) * jnp.square(g)
      t = count.astype(jnp.float32)
      mu_hat = mu / (1 - self.b1**t)
      nu_hat = nu / (1 - self.b2**t)
      return p - lr * mu_hat / (jnp.sqrt(nu_hat) + self.eps), count, mu, nu

    out = jax.tree.map(leaf, active, grads, params, state.count, state.mu, state.nu)
    treedef = jax.tree.structure(params)
    new_params, count, mu, nu = (
      jax.tree.unflatten(treedef, leaves)
      for leaves in zip(*jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, tuple)), strict=True)
    )
    return new_params, AdamState(count=count, mu=mu, nu=nu)
