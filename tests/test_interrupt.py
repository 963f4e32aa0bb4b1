"""Ctrl-C and SIGTERM during training (issue 10): save, say how to resume, exit 75, and the
resumed run ends bitwise equal to an uninterrupted one.

Ctrl-C is SIGINT to the whole process group, as a terminal sends it. Exit status 75
(EX_TEMPFAIL) after a signal-triggered save (docs/troubleshooting.md):
non-zero, so that a scheduler does not read a preempted run as finished, and distinct
from 128 + n, which means killed without saving.
"""

import os
import signal
import time

import jax
import numpy as np
import pytest

from edsr_jax import checkpoint

STEPS = 60  # tiny_reference's
EX_TEMPFAIL = 75


@pytest.mark.parametrize(
  "sig",
  # Ctrl-C's save-and-exit-75 is also a case of tests/test_bad_inputs.py (main-ctrl-c-saves).
  [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
  ids=["ctrl-c", "sigterm"],
)
def test_signal_saves_exits_75_and_resumes_bitwise_equal(tmp_path, tiny, tiny_reference, sig):
  workdir = tmp_path / "run"
  cmd = tiny.cmd(workdir, STEPS, "--config.checkpoint_every_steps=10")
  proc = tiny.start(cmd, start_new_session=True)
  try:
    tiny.wait_for_checkpoint(proc, workdir, 10)
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
  stopped_at = max(tiny.finished_steps(workdir))
  assert 10 <= stopped_at < STEPS
  last = err.strip().splitlines()[-1]  # one line saying where it stopped and how to go on
  assert f"step {stopped_at}" in last and "resume" in last, last
  assert not [p.name for p in checkpoint.checkpoint_dir(workdir).iterdir() if "tmp" in p.name]
  assert not (workdir / ".run.lock").exists()  # the lock goes with the run

  resumed = tiny.run(cmd)
  assert f"at step {stopped_at}" in resumed.stderr
  jax.tree.map(np.testing.assert_array_equal, tiny.params(tiny_reference), tiny.params(workdir))


def test_second_ctrl_c_stops_at_once_and_the_run_resumes(tmp_path, tiny, tiny_reference):
  workdir = tmp_path / "run"
  # A save every step, so the second Ctrl-C lands during one.
  proc = tiny.start(
    tiny.cmd(workdir, STEPS, "--config.checkpoint_every_steps=1"), start_new_session=True
  )
  try:
    tiny.wait_for_checkpoint(proc, workdir, 5)
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
  latest = max(tiny.finished_steps(workdir))
  resumed = tiny.run(tiny.cmd(workdir, STEPS, "--config.checkpoint_every_steps=10"))
  assert f"at step {latest}" in resumed.stderr
  jax.tree.map(np.testing.assert_array_equal, tiny.params(tiny_reference), tiny.params(workdir))
