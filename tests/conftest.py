"""Shared test fixtures.

Real benchmark data lives outside the repository (`../shared/data` in CI). Tests that
need it read the path from `EDSR_SHARED_DATA`; they skip when it is unset on a
developer's machine, but fail in CI (CI=true) so a missing path never passes silently.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

# Imported before the cache variable below is set: this process's own compile counts
# (count_compiles) must see real compilations.
import jax  # noqa: F401
import pytest

# The CLIs that tests run as subprocesses compile the same tiny networks again and again;
# a persistent compilation cache shared by them (fresh for each test session) halves
# their start-up. Compiled programs are the same with or without it.
_CACHE = tempfile.mkdtemp(prefix="edsr_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = os.environ.get("EDSR_SHARED_DATA", "")
  if path and pathlib.Path(path, "benchmark").is_dir():
    return pathlib.Path(path)
  message = f"EDSR_SHARED_DATA={path!r} does not point at the shared data folder"
  if os.environ.get("CI"):
    pytest.fail(message)
  pytest.skip(message)


def read_scalars(path: pathlib.Path, tag: str) -> dict[int, float]:
  """{step: value} of a scalar in TensorBoard event files (a file or all files in a dir)."""
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  files = [path] if path.is_file() else sorted(path.glob("events.out.tfevents.*"))
  out = {}
  for f in files:
    for event in event_file_loader.EventFileLoader(str(f)).Load():
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return out


@pytest.fixture
def scalars():
  return read_scalars


def count_compiles(fn, name: str) -> int:
  """How many XLA compilations of functions whose name contains `name` `fn()` triggers."""

  names = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      names.append(kwargs.get("fun_name", ""))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return sum(name in n for n in names)


@pytest.fixture(scope="session")
def without_tensorflow(tmp_path_factory) -> dict[str, str]:
  """Environment for a subprocess in which TensorFlow and TFDS cannot be imported, as on a
  machine that has JAX but no TensorFlow (the import fails as for a missing package)."""
  block = tmp_path_factory.mktemp("no_tensorflow")
  for name in ("tensorflow", "tensorflow_datasets"):
    (block / name).mkdir()
    (block / name / "__init__.py").write_text(
      f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n"
    )
  return dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(block), os.environ.get("PYTHONPATH")]))
  )
