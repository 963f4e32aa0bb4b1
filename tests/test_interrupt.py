"""Ctrl-C and SIGTERM during training (issue 10): save, say how to resume, exit 75, and the
resumed run ends bitwise equal to an uninterrupted one.

Ctrl-C is SIGINT to the whole process group, as a terminal sends it. Exit status 75
(EX_TEMPFAIL) after a signal-triggered save (README, "When something goes wrong"):
non-zero, so that a scheduler does not read a preempted run as finished, and distinct
from 128 + n, which means killed without saving.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from edsr_jax import checkpoint, inference

ROOT = pathlib.Path(__file__).parent.parent
TINY = [
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
STEPS = 60
EX_TEMPFAIL = 75


def _cmd(workdir, steps, *extra):
  return [
    sys.executable,
    "-m",
    "edsr_jax.main",
    *TINY,
    f"--workdir={workdir}",
    f"--config.num_train_steps={steps}",
    *extra,
  ]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu")


def _run(cmd):
  result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _finished_steps(workdir):
  ckpt = checkpoint.checkpoint_dir(workdir)
  if not ckpt.exists():
    return []
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def _params(workdir):
  return jax.device_get(inference.load(str(workdir)).params)


@pytest.fixture(scope="module")
def reference_params(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  _run(_cmd(workdir, STEPS, f"--config.checkpoint_every_steps={STEPS}"))
  return _params(workdir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_saves_exits_75_and_resumes_bitwise_equal(tmp_path, reference_params, sig):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
    _cmd(workdir, STEPS, "--config.checkpoint_every_steps=10"),
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    deadline = time.time() + 240
    while not any(s >= 10 for s in _finished_steps(workdir)):
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.time() < deadline, "no checkpoint within the time limit"
      time.sleep(0.02)
    if sig == signal.SIGINT:
      os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
    else:
      proc.send_signal(sig)  # what `kill PID` or a scheduler does
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == EX_TEMPFAIL, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  stopped_at = max(_finished_steps(workdir))
  assert 10 <= stopped_at < STEPS
  last = err.strip().splitlines()[-1]  # one line saying where it stopped and how to go on
  assert f"step {stopped_at}" in last and "resume" in last, last
  assert not [p.name for p in checkpoint.checkpoint_dir(workdir).iterdir() if "tmp" in p.name]
  assert not (workdir / ".run.lock").exists()  # the lock goes with the run

  resumed = _run(_cmd(workdir, STEPS, "--config.checkpoint_every_steps=10"))
  assert f"at step {stopped_at}" in resumed.stderr
  jax.tree.map(np.testing.assert_array_equal, reference_params, _params(workdir))


def test_second_ctrl_c_stops_at_once_and_the_run_resumes(tmp_path, reference_params):
  workdir = tmp_path / "run"
  # A save every step, so the second Ctrl-C lands during one.
  proc = subprocess.Popen(
    _cmd(workdir, STEPS, "--config.checkpoint_every_steps=1"),
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    deadline = time.time() + 240
    while not any(s >= 5 for s in _finished_steps(workdir)):
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.time() < deadline, "no checkpoint within the time limit"
      time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 130, err[-3000:]
  assert time.monotonic() - started < 30  # at once, not after the save
  assert "Traceback" not in err, err[-3000:]
  latest = max(_finished_steps(workdir))
  resumed = _run(_cmd(workdir, STEPS, "--config.checkpoint_every_steps=10"))
  assert f"at step {latest}" in resumed.stderr
  jax.tree.map(np.testing.assert_array_equal, reference_params, _params(workdir))
