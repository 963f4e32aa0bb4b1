"""End to end through the CLI: train, checkpoint, SIGKILL, resume, and compare.

A resumed run must continue the step count, and its losses must be exactly those of an
uninterrupted run (same batches by construction, same restored state), which also shows
that the learning-rate schedule and Adam's moments were restored.
"""

import io
import os
import pathlib
import signal
import subprocess

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

from edsr_jax import checkpoint, errors, inference

ROOT = pathlib.Path(__file__).parent.parent
# tiny's run, with a save every 5 steps of which 2 are kept.
E2E = (
  "--config.batch_size=4",
  "--config.checkpoint_every_steps=5",
  "--config.max_checkpoints_to_keep=2",
  "--config.eval_every_steps=1000",
)
STEPS = 30


@pytest.mark.slow  # ~25 s; test_scale_out's SIGKILL-during-saves test covers kill and resume
def test_kill_and_resume_continues_exactly(tmp_path, tiny, scalars):
  reference = tmp_path / "reference"
  tiny.run(tiny.cmd(reference, STEPS, *E2E))
  ref_loss = scalars(reference, "train/loss")
  assert sorted(ref_loss) == list(range(1, STEPS + 1))
  assert np.mean([ref_loss[s] for s in range(21, 31)]) < np.mean(
    [ref_loss[s] for s in range(1, 11)]
  )  # it learns

  # Kill a long run with SIGKILL as soon as it has a finished checkpoint at step >= 10.
  workdir = tmp_path / "run"
  proc = tiny.start(tiny.cmd(workdir, 100_000, *E2E))
  tiny.wait_for_checkpoint(proc, workdir, 10)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  resume_from = max(tiny.finished_steps(workdir))
  assert resume_from < STEPS
  first_events = set(workdir.glob("events.out.tfevents.*"))

  resumed = tiny.run(tiny.cmd(workdir, STEPS, *E2E))
  assert f"at step {resume_from}" in resumed.stderr
  (new_events,) = set(workdir.glob("events.out.tfevents.*")) - first_events
  loss = scalars(new_events, "train/loss")
  # The step count continues where the checkpoint left off ...
  assert sorted(loss) == list(range(resume_from + 1, STEPS + 1))
  # ... and training continues exactly as if it had never stopped.
  for step in loss:
    np.testing.assert_allclose(loss[step], ref_loss[step], rtol=1e-6, err_msg=f"step {step}")
  assert tiny.finished_steps(workdir)[-1] == STEPS
  lr = scalars(new_events, "train/learning_rate")
  assert lr[STEPS] == scalars(reference, "train/learning_rate")[STEPS]


def test_resume_refuses_different_network(tmp_path, tiny):
  workdir = tmp_path / "run"
  tiny.run(tiny.cmd(workdir, 5, *E2E))
  other = tiny.run(tiny.cmd(workdir, 10, *E2E) + ["--config.model.num_features=16"], check=False)
  assert other.returncode != 0
  assert "holds a checkpoint of a different network" in other.stderr
  assert "model.num_features: checkpoint 8, config 16" in other.stderr
  assert tiny.finished_steps(workdir) == [5]  # nothing already written is lost


def test_corrupt_latest_checkpoint_is_a_clear_error_and_is_kept(tmp_path, tiny):
  workdir = tmp_path / "run"
  tiny.run(tiny.cmd(workdir, 10, *E2E))
  latest = pathlib.Path(checkpoint.checkpoint_dir(workdir)) / "10"
  data_files = [p for p in (latest / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data_files
  for p in data_files:
    p.write_bytes(p.read_bytes()[:16])
  result = tiny.run(tiny.cmd(workdir, 20, *E2E), check=False)
  assert result.returncode != 0
  assert f"error: {latest}: cannot resume from this checkpoint" in result.stderr
  # No traceback through our code (orbax may still print its own asyncio noise at exit).
  assert 'edsr_jax/train.py", line' not in result.stderr
  assert tiny.finished_steps(workdir) == [5, 10]  # nothing already written is deleted


def _read_only(folder: pathlib.Path):
  """Makes `folder` refuse new entries (even to root) and returns the undo; else skips."""

  def ok(*cmd):
    return subprocess.run(cmd, capture_output=True).returncode == 0

  if os.geteuid() != 0:
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    return lambda: folder.chmod(mode)
  if ok("chattr", "+i", str(folder)):  # immutable: ext4, xfs, btrfs
    return lambda: ok("chattr", "-i", str(folder))
  if ok("mount", "--bind", str(folder), str(folder)):  # a read-only view of itself
    if ok("mount", "-o", "remount,bind,ro", str(folder)):
      return lambda: ok("umount", str(folder))
    ok("umount", str(folder))
  pytest.skip(f"cannot make {folder} read-only here as root (no chattr +i, no bind mounts)")


@pytest.mark.slow  # ~19 s; test_bad_inputs' main-disk-full-during-save is the same path
def test_a_failed_save_stops_the_run_at_its_step_and_keeps_earlier_checkpoints(
  tmp_path, tiny, scalars
):
  workdir = tmp_path / "run"
  tiny.run(tiny.cmd(workdir, 5, *E2E))
  ckpt = pathlib.Path(checkpoint.checkpoint_dir(workdir))
  assert tiny.finished_steps(workdir) == [5]
  first_events = set(workdir.glob("events.out.tfevents.*"))
  undo = _read_only(ckpt)
  try:
    result = tiny.run(tiny.cmd(workdir, 30, *E2E), check=False)
  finally:
    undo()
  # One line naming the step directory and the cause, no traceback, a failed exit status.
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if "error:" in line]
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"error: cannot save checkpoint {ckpt / '10'} (")
  assert f"the checkpoints already in {ckpt} are kept" in lines[0]
  # The run stopped at that step: it resumed at 5 and logged steps 6-10, nothing after.
  (events,) = set(workdir.glob("events.out.tfevents.*")) - first_events
  assert sorted(scalars(events, "train/loss")) == list(range(6, 11))
  # The checkpoint before it is intact: it loads, and training resumes from it.
  assert tiny.finished_steps(workdir) == [5]
  assert inference.load(workdir).source == str(ckpt / "5")
  resumed = tiny.run(tiny.cmd(workdir, 10, *E2E))
  assert "at step 5" in resumed.stderr
  assert tiny.finished_steps(workdir) == [5, 10]


def test_a_workdir_where_checkpoints_cannot_be_created_is_a_clear_error(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  undo = _read_only(workdir)
  try:
    with pytest.raises(errors.CheckpointError) as info:
      checkpoint.make_manager(workdir)
  finally:
    undo()
  assert str(info.value).startswith(
    f"cannot create the checkpoint directory {workdir / 'checkpoints'}: "
  )


def _events(workdir):
  """{(tag, step): value} of every summary in `workdir` (images decoded to arrays)."""
  out = {}
  for f in pathlib.Path(workdir).glob("events.out.tfevents.*"):
    for event in event_file_loader.EventFileLoader(str(f)).Load():
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == "scalars":
          out[value.tag, event.step] = float(tensor_util.make_ndarray(value.tensor))
        elif plugin == "images":
          width, height, *pngs = value.tensor.string_val
          images = [np.asarray(Image.open(io.BytesIO(p))) for p in pngs]
          assert all(i.shape[:2] == (int(height), int(width)) for i in images)
          out[value.tag, event.step] = images
  return out


def test_training_without_tensorflow_writes_the_same_summaries(tmp_path, without_tensorflow, tiny):
  """Where TensorFlow is missing (CLU's writer needs it), training warns and writes the
  same scalars and validation images through tensorboard's own event writer."""

  def cmd(name):
    return tiny.cmd(tmp_path / name, 4, *E2E, "--config.eval_every_steps=2")

  tiny.run(cmd("clu"))
  no_tf = tiny.run(cmd("no_tf"), env=dict(without_tensorflow, JAX_PLATFORMS="cpu"))
  assert "CLU's summary writer cannot be imported (No module named 'tensorflow')" in no_tf.stderr
  assert "Traceback" not in no_tf.stderr
  ours, clu = _events(tmp_path / "no_tf"), _events(tmp_path / "clu")
  wanted = {k for k in clu if k[0] != "steps_per_sec" and not k[0].startswith("uptime")}
  assert {("train/loss", 4), ("val/psnr", 4), ("val/chelsea/lr_bicubic_sr_hr", 4)} <= wanted
  assert wanted <= set(ours)
  for key in wanted:
    if isinstance(clu[key], list):
      assert len(ours[key]) == len(clu[key]) and all(
        np.array_equal(a, b) for a, b in zip(ours[key], clu[key], strict=True)
      ), key
    else:
      assert ours[key] == pytest.approx(clu[key], rel=1e-6), key
  assert ("steps_per_sec", 4) in ours
