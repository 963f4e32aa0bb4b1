"""Data parallelism over devices and processes, preemption and crashes, non-finite steps.

Real subprocess runs of the CLI with real signals; multi-host is two real processes
connected by jax.distributed on localhost.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from edsr_jax import config_lib, inference, train

ROOT = pathlib.Path(__file__).parent.parent


def test_eight_devices_match_one(tmp_path, tiny, scalars):
  """Same global batch, same seed: same losses for 20 steps and the same parameters."""
  for n in (1, 8):
    tiny.run(tiny.cmd(tmp_path / str(n), 20, "--config.checkpoint_every_steps=20"), devices=n)
  one, eight = (scalars(tmp_path / str(n), "train/loss") for n in (1, 8))
  assert sorted(eight) == list(range(1, 21))
  for step in one:
    np.testing.assert_allclose(eight[step], one[step], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    tiny.params(tmp_path / "1"),
    tiny.params(tmp_path / "8"),
  )


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(tiny, workdir, steps):
  port = _free_port()
  procs = [
    subprocess.Popen(
      tiny.cmd(
        workdir,
        steps,
        "--config.checkpoint_every_steps=5",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      cwd=ROOT,
      env=tiny.env(2),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    errors = [p.communicate(timeout=300)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, err in zip(procs, errors, strict=True):
    assert p.returncode == 0, err[-3000:]
  return errors


@pytest.fixture(scope="module")
def four_devices(tiny, tmp_path_factory):
  """A 10-step run of one process with 4 devices: what 2 processes x 2 devices must match."""
  workdir = tmp_path_factory.mktemp("single")
  tiny.run(tiny.cmd(workdir, 10, "--config.checkpoint_every_steps=5"), devices=4)
  return workdir


def _assert_same_run(tiny, scalars, reference, workdir):
  """Same losses at every step, and the same final parameters."""
  single = scalars(reference, "train/loss")
  multi = scalars(workdir, "train/loss")  # only process 0 writes
  assert sorted(multi) == list(range(1, 11))
  for step in single:
    np.testing.assert_allclose(multi[step], single[step], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    tiny.params(reference),
    tiny.params(workdir),
  )


def test_two_processes_match_one_process_and_resume(tmp_path, tiny, scalars, four_devices):
  errors = _two_processes(tiny, tmp_path / "multi", 6)
  assert "process 0 of 2" in errors[0] and "process 1 of 2" in errors[1]
  assert tiny.finished_steps(tmp_path / "multi") == [5, 6]  # one checkpoint, written together
  errors = _two_processes(tiny, tmp_path / "multi", 10)  # resume both processes
  assert all("at step 6" in e for e in errors)
  _assert_same_run(tiny, scalars, four_devices, tmp_path / "multi")
  assert not list((tmp_path / "multi").glob("*/events.out.tfevents.*"))


def test_slurm_job_of_two_tasks_trains_like_one_process(
  tmp_path, tiny, scalars, fake_slurm, four_devices
):
  """launch/slurm.sh's job, started as sbatch and srun would start it on one node with two
  tasks: JAX's Slurm detection connects the two processes (coordinator on the first node,
  port from the job id), and they train the same steps as one process."""
  bin_dir, log, slurm_env = fake_slurm
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      "bash",
      "launch/slurm.sh",
      "submit",
      "--nodes=1",
      "--gpus_per_node=2",
      tiny.args[0],
      f"--workdir={workdir}",
      f"--venv={pathlib.Path(sys.executable).parent.parent}",
      "--",
      *tiny.args[1:],
      "--config.num_train_steps=10",
      "--config.checkpoint_every_steps=5",
    ],
    cwd=ROOT,
    env={**tiny.env(2), **slurm_env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr
  job = slurm_env["FAKE_SLURM_JOB_ID"]
  task_logs = [(workdir / "slurm" / f"edsr_jax-{job}-task{t}.out").read_text() for t in (0, 1)]
  assert (log / "batch_status").read_text() == "0", task_logs[0][-3000:]
  assert not (log / "scontrol").exists()  # finished: not requeued
  for t, text in enumerate(task_logs):
    assert f"process {t} of 2, 2 local devices of 4" in text
  _assert_same_run(tiny, scalars, four_devices, workdir)


STEPS = 60  # tiny_reference's
EX_TEMPFAIL = 75  # stopped by a signal after saving a checkpoint: run again to resume


def test_sigterm_saves_and_resumed_run_ends_bitwise_equal(tmp_path, tiny, tiny_reference):
  steps = STEPS
  workdir = tmp_path / "run"
  proc = tiny.start(tiny.cmd(workdir, steps, "--config.checkpoint_every_steps=10"))
  tiny.wait_for_checkpoint(proc, workdir, 10)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == EX_TEMPFAIL, err[-3000:]  # saved; run again to resume
  assert re.search(r"stopped by SIGTERM at step \d+: saved", err.strip().splitlines()[-1]), err
  stopped_at = max(tiny.finished_steps(workdir))
  assert 10 <= stopped_at < steps
  tiny.run(tiny.cmd(workdir, steps, "--config.checkpoint_every_steps=10"))
  jax.tree.map(np.testing.assert_array_equal, tiny.params(tiny_reference), tiny.params(workdir))


@pytest.mark.slow  # ~18 s; the same SIGTERM and resume without EMA is in `make test`
def test_sigterm_and_resume_with_ema_end_bitwise_equal(tmp_path, tiny):
  """The EMA of the parameters (config.ema_decay) is saved and resumed with the state."""
  steps, ema = 30, "--config.ema_decay=0.9"
  tiny.run(tiny.cmd(tmp_path / "reference", steps, ema, f"--config.checkpoint_every_steps={steps}"))
  workdir = tmp_path / "run"
  proc = tiny.start(tiny.cmd(workdir, steps, ema, "--config.checkpoint_every_steps=5"))
  tiny.wait_for_checkpoint(proc, workdir, 5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  # Saved and stopped: exit 0, or 75 (EX_TEMPFAIL) where the CLI says "run it again" so.
  assert proc.returncode in (0, 75), err[-3000:]
  assert 5 <= max(tiny.finished_steps(workdir)) < steps
  tiny.run(tiny.cmd(workdir, steps, ema, "--config.checkpoint_every_steps=5"))
  for use_ema in (True, False):
    reference, resumed = (
      jax.device_get(inference.load(str(w), use_ema=use_ema).params)
      for w in (tmp_path / "reference", workdir)
    )
    jax.tree.map(np.testing.assert_array_equal, reference, resumed)


def test_sigkill_during_saves_resumes_from_a_complete_checkpoint(tmp_path, tiny, tiny_reference):
  steps = STEPS
  workdir = tmp_path / "run"
  for kill_after in (3, 12):  # saves every step: the kill lands during one
    proc = tiny.start(tiny.cmd(workdir, steps, "--config.checkpoint_every_steps=1"))
    tiny.wait_for_checkpoint(proc, workdir, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  latest_complete = max(tiny.finished_steps(workdir))  # a step dir exists only once finalized
  result = tiny.run(tiny.cmd(workdir, steps, "--config.checkpoint_every_steps=1"))
  assert f"at step {latest_complete}" in result.stderr
  assert max(tiny.finished_steps(workdir)) == steps
  jax.tree.map(np.testing.assert_array_equal, tiny.params(tiny_reference), tiny.params(workdir))


def test_nonfinite_steps_are_skipped_and_stop_the_run(tmp_path, tiny, scalars):
  c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
  c.model.num_blocks, c.model.num_features = 1, 8
  c.patch_size, c.batch_size = 16, 4
  c.learning_rate = 1e30  # the first update makes the weights overflow the forward pass
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 50, 1, 1
  c.max_nonfinite_steps = 3
  c.data.demo_train_images, c.data.demo_val_images = ("astronaut",), ("chelsea",)
  with pytest.raises(FloatingPointError, match="not finite for 3 steps in a row"):
    train.train_and_evaluate(c, str(tmp_path))
  skipped = scalars(tmp_path, "train/nonfinite_steps")
  assert sum(skipped.values()) >= 3 and skipped[1] == 0
  for step in tiny.finished_steps(tmp_path):
    params = jax.device_get(inference.load(str(tmp_path / "checkpoints" / str(step))).params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params)), step


def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path, tiny):
  """JAX's preemption sync: every process saves at the same step and exits cleanly."""
  port = _free_port()
  workdir = tmp_path / "run"
  procs = [
    subprocess.Popen(
      tiny.cmd(
        workdir,
        100_000,
        "--config.checkpoint_every_steps=10",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      cwd=ROOT,
      env=tiny.env(2),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    tiny.wait_for_checkpoint(procs[0], workdir, 10)
    procs[1].send_signal(signal.SIGTERM)  # only one process is told
    errors = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [EX_TEMPFAIL, EX_TEMPFAIL], errors[1][-2000:]
  steps = [int(re.search(r"stopped by SIGTERM at step (\d+): saved", e).group(1)) for e in errors]
  assert steps[0] == steps[1] == max(tiny.finished_steps(workdir))
