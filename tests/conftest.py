"""Shared test fixtures.

Real benchmark data lives outside the repository (`../shared/data` in CI). Tests that
need it read the path from `EDSR_SHARED_DATA`; they skip when it is unset on a
developer's machine, but fail in CI (CI=true) so a missing path never passes silently.
"""

import atexit
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# Imported before the cache variable below is set: this process's own compile counts
# (count_compiles) must see real compilations.
import jax
import pytest

from edsr_jax import checkpoint, inference

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


# Slurm stand-ins for one node (launch/slurm.sh's tests): `sbatch` runs the batch script
# at once with the variables sbatch sets; `srun` starts SLURM_NTASKS copies of its
# command with the variables srun sets (what JAX's Slurm detection reads), forwards
# SIGTERM to them and exits with the highest status, as srun does; `scontrol` records its
# arguments. Each writes what it did into $FAKE_SLURM_LOG.
_FAKE_SBATCH = """#!{python}
import os, pathlib, re, subprocess, sys
log = pathlib.Path(os.environ["FAKE_SLURM_LOG"])
script = sys.argv[-1]
opt = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", pathlib.Path(script).read_text(), re.M))
assert opt["nodes"] == "1", "the fake runs one-node jobs"
job, tasks = os.environ["FAKE_SLURM_JOB_ID"], opt["ntasks-per-node"]
env = dict(
  os.environ, SLURM_JOB_ID=job, SLURM_JOB_NAME=opt["job-name"], SLURM_JOB_NODELIST="localhost",
  SLURM_NNODES="1", SLURM_NTASKS=tasks, SLURM_NTASKS_PER_NODE=tasks,
  SLURM_PROCID="0", SLURM_LOCALID="0",
)
out = opt["output"].replace("%x", opt["job-name"]).replace("%j", job)
with open(out, "a") as f:
  batch = subprocess.Popen(["bash", script], env=env, stdout=f, stderr=subprocess.STDOUT)
  (log / "batch_pid").write_text(str(batch.pid))
  status = batch.wait()
(log / "batch_status").write_text(str(status))
print(f"Submitted batch job {{job}}")
"""

_FAKE_SRUN = """#!{python}
import os, pathlib, signal, subprocess, sys
args, opts = sys.argv[1:], {{}}
while args[0].startswith("--"):
  key, _, value = args.pop(0)[2:].partition("=")
  opts[key] = value
n, job = int(os.environ["SLURM_NTASKS"]), os.environ["SLURM_JOB_ID"]
pathlib.Path(os.environ["FAKE_SLURM_LOG"], "srun_options").write_text(repr(opts))
tasks = []
for t in range(n):
  env = dict(
    os.environ, SLURM_PROCID=str(t), SLURM_LOCALID=str(t), SLURM_STEP_ID="0",
    SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"], SLURM_STEP_NUM_NODES="1",
    SLURM_STEP_NUM_TASKS=str(n),
  )
  out = opts["output"].replace("%x", os.environ["SLURM_JOB_NAME"]).replace("%j", job)
  with open(out.replace("%t", str(t)), "a") as f:
    tasks.append(subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT))
signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in tasks])
codes = [p.wait() for p in tasks]
sys.exit(max(c if c >= 0 else 128 - c for c in codes))
"""

_FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "$FAKE_SLURM_LOG/scontrol"
"""


def _free_slurm_job_id() -> str:
  """A job id whose coordinator port (JAX: 61440 + id % 4096) is free here."""
  for port in random.sample(range(61440, 65536), 50):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    return str(4096 * random.randint(1, 200) + port - 61440)
  raise RuntimeError("no free port in 61440..65535")


@pytest.fixture
def fake_slurm(tmp_path):
  """(bin folder to put first on PATH, log folder, environment additions)."""
  bin_dir, log = tmp_path / "slurm_bin", tmp_path / "slurm_log"
  bin_dir.mkdir()
  log.mkdir()
  for name, text in [("sbatch", _FAKE_SBATCH), ("srun", _FAKE_SRUN), ("scontrol", _FAKE_SCONTROL)]:
    (bin_dir / name).write_text(text.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  env = {"FAKE_SLURM_LOG": str(log), "FAKE_SLURM_JOB_ID": _free_slurm_job_id()}
  return bin_dir, log, env


# ---------------------------------------------------------------- tiny training runs

_REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyRuns:
  """`python -m edsr_jax.main` with a tiny network on two demo photos, as a real
  subprocess: the runs the CLI tests start, signal, kill, resume and compare."""

  args = [
    "--config=configs/demo.py",
    "--config.model.num_blocks=1",
    "--config.model.num_features=8",
    "--config.patch_size=16",
    "--config.batch_size=8",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=100000",
    "--config.data.demo_train_images=('astronaut','rocket')",
    "--config.data.demo_val_images=('chelsea',)",
  ]

  def cmd(self, workdir, steps: int, *extra: str) -> list[str]:
    """The command line; `extra` flags come last and override the tiny ones."""
    return [
      sys.executable,
      "-m",
      "edsr_jax.main",
      *self.args,
      f"--workdir={workdir}",
      f"--config.num_train_steps={steps}",
      *extra,
    ]

  def env(self, devices: int = 1) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))

  def run(self, cmd: list[str], devices: int = 1, timeout: float = 300, check=True, env=None):
    """Runs to the end (output as text); with `check` it must succeed."""
    result = subprocess.run(
      cmd,
      cwd=_REPO,
      env=self.env(devices) if env is None else env,
      capture_output=True,
      text=True,
      timeout=timeout,
    )
    if check:
      assert result.returncode == 0, result.stderr[-3000:]
    return result

  def start(self, cmd: list[str], devices: int = 1, **popen) -> subprocess.Popen:
    """Starts it in the background, stderr piped (to signal or kill it)."""
    return subprocess.Popen(
      cmd,
      cwd=_REPO,
      env=self.env(devices),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
      **popen,
    )

  @staticmethod
  def finished_steps(workdir) -> list[int]:
    ckpt = checkpoint.checkpoint_dir(workdir)
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []

  def wait_for_checkpoint(self, proc: subprocess.Popen, workdir, step: int) -> None:
    deadline = time.time() + 240
    while not any(s >= step for s in self.finished_steps(workdir)):
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.time() < deadline, f"no checkpoint {step} within the time limit"
      time.sleep(0.02)

  @staticmethod
  def params(workdir, **load):
    return jax.device_get(inference.load(str(workdir), **load).params)


@pytest.fixture(scope="session")
def tiny() -> TinyRuns:
  return TinyRuns()


@pytest.fixture(scope="session")
def tiny_reference(tiny, tmp_path_factory) -> pathlib.Path:
  """An uninterrupted 60-step tiny run: what stopped and resumed runs must end equal to
  (how often a run saves does not change its parameters)."""
  workdir = tmp_path_factory.mktemp("tiny_reference")
  tiny.run(tiny.cmd(workdir, 60, "--config.checkpoint_every_steps=60"))
  return workdir


@pytest.fixture
def compiles():
  """count_compiles(fn, name): XLA compilations of functions named like `name` in fn()."""
  return count_compiles


def run_tool(tool: str, *args, cwd=_REPO, env=None, timeout: float = 600):
  """`python -m edsr_jax.<tool> ARGS` as a real subprocess from `cwd` (output as text)."""
  return subprocess.run(
    [sys.executable, "-m", f"edsr_jax.{tool}", *map(str, args)],
    cwd=cwd,
    env=dict(os.environ) if env is None else env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="session")
def cli():
  """run_tool: a command-line tool of the package as a user runs it."""
  return run_tool
