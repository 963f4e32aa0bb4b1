"""`edsr_jax.workdir_lock` with real processes: one run per workdir, stale locks taken over.

Holders and contenders are separate Python processes (`python -c`), as two training runs
would be; they import only `edsr_jax.workdir_lock` (no JAX), so each starts in well under a
second.
"""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from edsr_jax import workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from edsr_jax import workdir_lock
lock = workdir_lock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""

TRY = """
import sys
from edsr_jax import workdir_lock
try:
  lock = workdir_lock.acquire(sys.argv[1])
except workdir_lock.WorkdirLockError as e:
  print(f"{type(e).__name__}: {e}", file=sys.stderr)
  sys.exit(3)
print("acquired", lock.took_over is not None, flush=True)
lock.release()
"""


def _env():
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _python(code, *args, **kw):
  return subprocess.run(
    [sys.executable, "-c", code, *map(str, args)],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=60,
    **kw,
  )


@pytest.fixture
def holder():
  """Starts a process that acquires a workdir and keeps it; killed at teardown."""
  procs = []

  def start(workdir):
    proc = subprocess.Popen(
      [sys.executable, "-c", HOLD, str(workdir)],
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    procs.append(proc)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _lock(workdir) -> pathlib.Path:
  return pathlib.Path(workdir) / workdir_lock.LOCK_NAME


def _write_lock(workdir, **fields):
  """A lock file as this module writes it, with `fields` changed."""
  info = workdir_lock._this_process(["python", "-m", "edsr_jax.main"])
  info.update(fields)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  _lock(workdir).write_text(json.dumps(info))
  return info


def test_acquire_writes_the_record_and_release_removes_it(tmp_path):
  workdir = tmp_path / "new" / "run"  # created, with its parents
  with workdir_lock.acquire(workdir, argv=["train", "--workdir=x"]) as lock:
    assert lock.held
    info = json.loads(_lock(workdir).read_text())
    assert info["host"] == socket.gethostname()
    assert info["pid"] == os.getpid()
    assert info["argv"] == ["train", "--workdir=x"]
    assert info["process_start_ticks"] == workdir_lock.process_start_ticks(os.getpid())
    assert info["started"]
  assert not lock.held
  assert sorted(os.listdir(workdir)) == []  # no lock, no temporary files
  lock.release()  # idempotent


def test_release_on_exception(tmp_path):
  with pytest.raises(RuntimeError), workdir_lock.acquire(tmp_path):
    raise RuntimeError("training failed")
  assert not _lock(tmp_path).exists()


def test_second_process_is_refused_naming_host_and_pid(tmp_path, holder):
  first = holder(tmp_path)
  second = _python(TRY, tmp_path)
  assert second.returncode == 3, second.stdout + second.stderr
  message = second.stderr.strip()
  assert message.startswith("WorkdirBusyError: ")
  assert "\n" not in message
  assert f"pid {first.pid} on host {socket.gethostname()}" in message
  assert str(tmp_path) in message
  assert f"rm {_lock(tmp_path)}" in message
  assert json.loads(_lock(tmp_path).read_text())["pid"] == first.pid  # untouched


def test_same_process_twice_is_refused(tmp_path):
  with workdir_lock.acquire(tmp_path):
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()} "):
      workdir_lock.acquire(tmp_path)
    assert _lock(tmp_path).exists()


def test_lock_of_a_killed_run_is_taken_over(tmp_path, holder, caplog):
  first = holder(tmp_path)
  first.send_signal(signal.SIGKILL)
  first.wait(timeout=30)
  assert json.loads(_lock(tmp_path).read_text())["pid"] == first.pid  # left behind
  with caplog.at_level(logging.WARNING, logger=workdir_lock.__name__):
    lock = workdir_lock.acquire(tmp_path)
  with lock:
    assert lock.took_over["pid"] == first.pid
    assert json.loads(_lock(tmp_path).read_text())["pid"] == os.getpid()
  assert f"took over the stale run lock of pid {first.pid}" in caplog.text
  assert f"pid {first.pid} is not running" in caplog.text
  assert not _lock(tmp_path).exists()


def test_killed_run_taken_over_by_another_process(tmp_path, holder):
  first = holder(tmp_path)
  first.kill()
  first.wait(timeout=30)
  second = _python(TRY, tmp_path)
  assert second.returncode == 0, second.stderr
  assert second.stdout.split() == ["acquired", "True"]
  assert "took over the stale run lock" in second.stderr
  assert not _lock(tmp_path).exists()


def test_reused_pid_is_taken_over(tmp_path):
  # A live process (this one) with another start time: its pid was reused.
  ticks = workdir_lock.process_start_ticks(os.getpid())
  _write_lock(tmp_path, pid=os.getpid(), process_start_ticks=ticks - 1)
  with workdir_lock.acquire(tmp_path) as lock:
    assert lock.took_over["process_start_ticks"] == ticks - 1


def test_reused_pid_of_another_live_process_is_taken_over(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, process_start_ticks=1)
    second = _python(TRY, tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"pid {sleeper.pid} is now another process (pid reused)" in second.stderr
  finally:
    sleeper.kill()
    sleeper.wait()


def test_live_process_without_flock_is_refused(tmp_path):
  # The record names a running process with its real start time, but nothing holds the
  # flock (a file system whose locks do not work): nothing can be concluded, so refuse.
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    deadline = time.time() + 10
    while workdir_lock.process_start_ticks(sleeper.pid) is None and time.time() < deadline:
      time.sleep(0.01)
    _write_lock(
      tmp_path, pid=sleeper.pid, process_start_ticks=workdir_lock.process_start_ticks(sleeper.pid)
    )
    second = _python(TRY, tmp_path)
    assert second.returncode == 3, second.stdout
    assert f"pid {sleeper.pid} on host {socket.gethostname()}" in second.stderr
    assert "still running" in second.stderr
  finally:
    sleeper.kill()
    sleeper.wait()


def test_lock_from_before_a_reboot_is_taken_over(tmp_path):
  _write_lock(tmp_path, boot_id="00000000-0000-0000-0000-000000000000")
  if workdir_lock._boot_id() is None:
    pytest.skip("no /proc/sys/kernel/random/boot_id here")
  with workdir_lock.acquire(tmp_path) as lock:
    assert lock.took_over["boot_id"].startswith("0000")


def test_lock_from_another_host_is_refused_unless_taken_over(tmp_path):
  _write_lock(tmp_path, host="tpu-worker-7", pid=4242)
  with pytest.raises(workdir_lock.WorkdirBusyError) as refused:
    workdir_lock.acquire(tmp_path)
  message = str(refused.value)
  assert "pid 4242 on host tpu-worker-7" in message
  assert "cannot be checked" in message
  assert f"rm {_lock(tmp_path)}" in message
  assert json.loads(_lock(tmp_path).read_text())["host"] == "tpu-worker-7"  # kept
  with workdir_lock.acquire(tmp_path, take_over=True) as lock:
    assert lock.took_over["host"] == "tpu-worker-7"


@pytest.mark.parametrize("content", ["", "not json", '{"pid": "x"}', "[1, 2]"])
def test_unreadable_lock_is_refused_with_how_to_remove_it(tmp_path, content):
  _lock(tmp_path).write_text(content)
  with pytest.raises(workdir_lock.WorkdirLockError) as refused:
    workdir_lock.acquire(tmp_path)
  assert not isinstance(refused.value, workdir_lock.WorkdirBusyError)
  assert f"rm {_lock(tmp_path)}" in str(refused.value)
  assert _lock(tmp_path).read_text() == content  # not removed behind the user's back


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(workdir_lock.WorkdirLockError, match="afile exists and is not a folder"):
    workdir_lock.acquire(tmp_path / "afile")


def test_only_one_of_many_simultaneous_processes_wins(tmp_path):
  # Six processes wait at a start line, then all acquire at once; a winner holds the lock
  # until told to stop, so a second winner would show up however slowly they start.
  race = """
import os, sys, time
from edsr_jax import workdir_lock
workdir, go, stop = sys.argv[1:]
while not os.path.exists(go):
  time.sleep(0.001)
try:
  lock = workdir_lock.acquire(workdir)
except workdir_lock.WorkdirBusyError:
  sys.exit(3)
while not os.path.exists(stop):
  time.sleep(0.01)
lock.release()
"""
  workdir, go, stop = tmp_path / "run", tmp_path / "go", tmp_path / "stop"
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", race, str(workdir), str(go), str(stop)],
      env=_env(),
      stderr=subprocess.DEVNULL,
    )
    for _ in range(6)
  ]
  try:
    time.sleep(1)
    go.touch()
    deadline = time.time() + 60
    while sum(p.poll() is not None for p in procs) < 5 and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(0.5)  # a second winner would still be running here
    assert sorted(p.poll() for p in procs if p.poll() is not None) == [3] * 5
    (winner,) = [p for p in procs if p.poll() is None]
    assert json.loads(_lock(workdir).read_text())["pid"] == winner.pid
  finally:
    stop.touch()
    codes = [p.wait(timeout=60) for p in procs]
  assert sorted(codes) == [0, 3, 3, 3, 3, 3]
  assert not list(workdir.iterdir())  # no lock, no temporary files


def test_non_chief_takes_nothing(tmp_path):
  lock = workdir_lock.acquire(tmp_path, is_chief=False)
  assert not lock.held
  assert not _lock(tmp_path).exists()
  lock.release()


@pytest.mark.parametrize("workdir", ["gs://bucket/runs/x2", "s3://bucket/run"])
def test_object_store_workdir_is_not_locked(workdir, caplog):
  with caplog.at_level(logging.WARNING, logger=workdir_lock.__name__):
    lock = workdir_lock.acquire(workdir)
  assert not lock.held
  assert "no run lock is taken" in caplog.text
  lock.release()


def test_release_keeps_a_lock_that_is_no_longer_ours(tmp_path):
  # The user removed the lock of a run they thought dead and started another: the first
  # run's release must not delete the second run's lock.
  first = workdir_lock.acquire(tmp_path)
  _lock(tmp_path).unlink()
  second = workdir_lock.acquire(tmp_path)
  first.release()
  assert json.loads(_lock(tmp_path).read_text())["pid"] == os.getpid()
  assert second.held
  second.release()
  assert not _lock(tmp_path).exists()


def test_file_system_without_hard_links(tmp_path, monkeypatch):
  def no_link(src, dst):
    raise PermissionError(1, "Operation not permitted")

  monkeypatch.setattr(os, "link", no_link)
  with workdir_lock.acquire(tmp_path):
    assert json.loads(_lock(tmp_path).read_text())["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirBusyError):
      workdir_lock.acquire(tmp_path)
  assert not list(tmp_path.iterdir())
