"""PatchSampler and prefetch_batches: determinism, LR/HR alignment, augmentation,
per-process rows, errors, and resumption."""

import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from edsr_jax import data
from edsr_jax.errors import ConfigError

SIZES = [(70, 90), (96, 64), (81, 77), (64, 100)]  # HR (h, w); some not multiples of s


def _images(scales, sizes=SIZES, seed=0) -> data.SRImages:
  """Random HR images and LR = HR[::s, ::s] (nearest subsample), LR (H // s, W // s)."""
  rng = np.random.default_rng(seed)
  hrs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
  lr = {
    s: [hr[: hr.shape[0] // s * s : s, : hr.shape[1] // s * s : s] for hr in hrs] for s in scales
  }
  return data.SRImages([f"im{i}" for i in range(len(hrs))], hrs, lr)


def _sampler(images, scales=(2,), patch=12, batch=16, seed=3, **kw) -> data.PatchSampler:
  return data.PatchSampler(
    images, scales=scales, patch_size=patch, global_batch=batch, seed=seed, **kw
  )


# The 8 symmetries of a square, written independently of data.augment's bit codes.
SYMMETRIES = [lambda x, k=k: np.rot90(x, k) for k in range(4)] + [
  lambda x, k=k: np.fliplr(np.rot90(x, k)) for k in range(4)
]


def _symmetry(plain: np.ndarray, augmented: np.ndarray) -> int:
  found = [
    k
    for k, op in enumerate(SYMMETRIES)
    if op(plain).shape == augmented.shape and np.array_equal(op(plain), augmented)
  ]
  assert len(found) == 1, "the augmented patch is not one flip/transpose of the plain one"
  return found[0]


def test_batch_is_a_pure_function_of_seed_and_step():
  images = _images((2,))
  a, b = _sampler(images), _sampler(images)
  a7, a3 = a.batch(7, 2), a.batch(3, 2)
  b3, b7 = b.batch(3, 2), b.batch(7, 2)  # other instance, other order
  for k in ("lr", "hr"):
    np.testing.assert_array_equal(a7[k], b7[k])
    np.testing.assert_array_equal(a3[k], b3[k])
  assert not np.array_equal(a3["lr"], a7["lr"])
  assert not np.array_equal(_sampler(images, seed=4).batch(3, 2)["lr"], a3["lr"])
  assert a3["lr"].shape == (16, 12, 12, 3) and a3["hr"].shape == (16, 24, 24, 3)
  assert a3["lr"].dtype == np.uint8 and a3["hr"].dtype == np.uint8


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_patches_are_aligned_and_augmented_by_flips_and_transposes(scale):
  images = _images((scale,))
  augmented = _sampler(images, scales=(scale,))
  plain = _sampler(images, scales=(scale,), augment=False)
  seen = set()
  for step in range(40):
    aug, ref = augmented.batch(step, scale), plain.batch(step, scale)
    for row in range(16):
      lr0, hr0 = ref["lr"][row], ref["hr"][row]
      np.testing.assert_array_equal(lr0, hr0[::scale, ::scale])  # aligned to the pixel
      k = _symmetry(lr0, aug["lr"][row])
      assert _symmetry(hr0, aug["hr"][row]) == k  # the same op on LR and HR
      seen.add(k)
  assert seen == set(range(8))


def test_every_position_including_the_edges_is_drawn():
  images = _images((2,), sizes=[(40, 44)])  # LR 20x22, patch 16: 5 x 7 positions
  sampler = _sampler(images, patch=16, augment=False)
  lr = images.lr[2][0]
  positions = set()
  for step in range(60):
    for patch in sampler.batch(step, 2)["lr"]:
      hits = [
        (y, x)
        for y in range(5)
        for x in range(7)
        if np.array_equal(lr[y : y + 16, x : x + 16], patch)
      ]
      assert len(hits) == 1
      positions.add(hits[0])
  assert positions == {(y, x) for y in range(5) for x in range(7)}


@pytest.mark.parametrize("count", [2, 4])
def test_processes_cut_disjoint_rows_of_the_same_global_batch(count):
  images = _images((2,))
  whole = _sampler(images)
  parts = [_sampler(images, process_index=i, process_count=count) for i in range(count)]
  for step in (0, 5, 11):
    full = whole.batch(step, 2)
    local = [p.batch(step, 2) for p in parts]
    for k in ("lr", "hr"):
      assert all(b[k].shape[0] == 16 // count for b in local)
      np.testing.assert_array_equal(np.concatenate([b[k] for b in local]), full[k])
    # A row repeated across processes only where the global batch repeats it.
    owner = np.repeat(np.arange(count), 16 // count)
    pairs = {
      (i, j)
      for i in range(16)
      for j in range(16)
      if owner[i] < owner[j] and np.array_equal(full["hr"][i], full["hr"][j])
    }
    across = set()
    for a in range(count):
      for b in range(a + 1, count):
        for i, x in enumerate(local[a]["hr"]):
          for j, y in enumerate(local[b]["hr"]):
            if np.array_equal(x, y):
              across.add((a * 16 // count + i, b * 16 // count + j))
    assert across == pairs


def test_batch_that_does_not_divide_over_processes_is_refused():
  with pytest.raises(ConfigError, match=r"config.batch_size=16 does not divide over 3"):
    _sampler(_images((2,)), process_count=3)


def test_patch_larger_than_the_smallest_image_is_refused():
  images = _images((2, 4), sizes=[(96, 96), (80, 60)])  # smallest x4 LR side: 15
  _sampler(images, scales=(2, 4), patch=15)
  with pytest.raises(
    ConfigError,
    match=r"config.patch_size=16 is larger than the smallest "
    r"training image at x4: im1 is 15x20 LR pixels; allowed at most 15",
  ):
    _sampler(images, scales=(2, 4), patch=16)


def _sharding():
  return NamedSharding(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]), P("data"))


def test_prefetch_yields_every_step_in_order_with_the_sampler_data():
  scales = (2, 3, 4)
  sampler = _sampler(_images(scales), scales=scales, patch=8, batch=4)
  got = list(data.prefetch_batches(sampler, range(0, 12), scales, _sharding(), size=2))
  assert [step for step, _, _ in got] == list(range(12))
  assert len({scale for _, scale, _ in got}) > 1  # MDSR: scales drawn per step
  for step, scale, batch in got:
    assert scale == data.scale_for_step(sampler.seed, step, scales)
    want = sampler.batch(step, scale)
    for k in ("lr", "hr"):
      assert isinstance(batch[k], jax.Array) and batch[k].sharding.is_equivalent_to(
        _sharding(), batch[k].ndim
      )
      np.testing.assert_array_equal(np.asarray(batch[k]), want[k])


def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one():
  scales = (2, 3)
  sampler = _sampler(_images(scales), scales=scales, patch=8, batch=4)
  full = {
    s: (c, b) for s, c, b in data.prefetch_batches(sampler, range(0, 10), scales, _sharding())
  }
  resumed = list(
    data.prefetch_batches(
      _sampler(_images(scales), scales=scales, patch=8, batch=4), range(6, 10), scales, _sharding()
    )
  )
  assert [s for s, _, _ in resumed] == [6, 7, 8, 9]
  for step, scale, batch in resumed:
    assert scale == full[step][0]
    for k in ("lr", "hr"):
      np.testing.assert_array_equal(np.asarray(batch[k]), np.asarray(full[step][1][k]))


def test_an_error_in_the_sampler_surfaces_in_the_consumer():
  sampler = _sampler(_images((2,)), patch=8, batch=4)
  real_batch = sampler.batch

  def failing_batch(step, scale):
    if step == 5:
      raise RuntimeError("decode failed at step 5")
    return real_batch(step, scale)

  sampler.batch = failing_batch
  steps = []
  with pytest.raises(RuntimeError, match="decode failed at step 5"):
    for step, _, _ in data.prefetch_batches(sampler, range(0, 10), (2,), _sharding()):
      steps.append(step)
  assert steps == list(range(len(steps))) and len(steps) <= 5


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == "prefetch" and t.is_alive()]


def test_prefetch_thread_ends_when_the_consumer_stops_early():
  before = len(_prefetch_threads())
  sampler = _sampler(_images((2,)), patch=8, batch=4)
  batches = data.prefetch_batches(sampler, range(0, 4), (2,), _sharding(), size=2)
  next(batches)
  time.sleep(0.3)  # let the producer fill the queue and reach the end of `steps`
  batches.close()
  deadline = time.time() + 2
  while len(_prefetch_threads()) > before and time.time() < deadline:
    time.sleep(0.05)
  assert len(_prefetch_threads()) == before
