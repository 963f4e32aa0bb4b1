"""One training run per workdir: a lock file that names the run holding it.

  with workdir_lock.acquire(workdir, is_chief=jax.process_index() == 0):
    ...train...

The lock is `<workdir>/.run.lock`, a JSON record of the run holding it (host, pid, the
process's start time and boot id, start time, argv). While the run is alive it also holds
an `fcntl.flock` on the open file, so a second run on the same host is refused at once,
race-free, whatever the file says.

How a lock is taken:
- It is written to a private temporary file, flocked, and then hard-linked to
  `.run.lock`: `link()` is an atomic create-if-absent (also on NFS), and the file is
  complete and locked the instant it becomes visible, so nobody ever reads a half-written
  lock. Where hard links are not supported, `O_CREAT | O_EXCL` on `.run.lock` is used.
- If `.run.lock` exists and its flock is held: the workdir is busy
  (`WorkdirBusyError`, naming the workdir, the host and pid holding it, and how to clear it).
- If it exists and its flock is free, no process on this kernel holds it. The lock is
  stale, and is taken over with a logged warning, when it was written on this host and its
  process is gone: the pid is not running, or runs a different process (another start
  time: the pid was reused), or the host has restarted since (another boot id). A lock
  whose process is still running with the same start time is refused: that process lost
  its flock (a file system without working locks), so nothing can be concluded.
- A lock written on another host cannot be checked from here: it is refused, and the
  message says how to remove it (`rm <workdir>/.run.lock`) once that run is known to be
  gone; `take_over=True` takes it over anyway.
- A lock file that is not a lock this module wrote (not JSON, missing fields) is refused
  with a message to remove it: the link protocol never leaves a partial file, so its
  content cannot be trusted to say who holds the workdir.

`release()` (or leaving the `with` block) removes the file. A run killed with SIGKILL, or
by a signal it does not handle, leaves the file behind but not the flock: the next run on
the same host takes it over. A run on another host must remove it by hand.

Multi-process runs share one workdir: only the chief (process 0) takes the lock;
`is_chief=False` returns a handle that holds nothing. The other processes learn of a
refusal when the chief exits with the error.

Workdirs on object stores (`gs://...`, any `scheme://`) are not locked: they offer no
atomic create-if-absent through the file API used here (GCS preconditions would need the
storage client, and object stores have no flock to tell a live run from a dead one). A
warning is logged and a handle that holds nothing is returned; the user must not start
two runs on one `gs://` workdir.

It imports only `edsr_jax.errors` (a leaf): its errors are UserErrors, reported by every
tool as one `error:` line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import secrets
import socket
import sys

from edsr_jax import errors

LOCK_NAME = ".run.lock"
_FORMAT = "edsr_jax workdir lock v1"
_ATTEMPTS = 20  # retries when the lock file changes under us (released or replaced)

logger = logging.getLogger(__name__)


class WorkdirLockError(errors.UserError, ValueError):
  """The workdir lock cannot be taken; the message names the workdir and what to do."""


class WorkdirBusyError(WorkdirLockError):
  """Another run holds the workdir (or may: a lock from another host cannot be checked)."""


# ---------------------------------------------------------------------------- this process


def _boot_id() -> str | None:
  try:
    return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
  except OSError:
    return None


def process_start_ticks(pid: int) -> int | None:
  """Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  try:
    # The command name (field 2) is in parentheses and may contain spaces and ')'.
    return int(stat[stat.rindex(")") + 2 :].split()[19])
  except (ValueError, IndexError):
    return None


def _process_state(pid: int) -> str | None:
  """The state letter of `pid` (/proc/<pid>/stat field 3: R, S, D, Z, ...), or None."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0]
  except (OSError, ValueError, IndexError):
    return None


def pid_alive(pid: int) -> bool:
  """Whether process `pid` is running. A zombie (exited, not yet reaped by its parent)
  is not: it holds no files and will never run again."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    pass
  except OverflowError:
    return False
  return _process_state(pid) not in ("Z", "X")


def _this_process(argv) -> dict:
  pid = os.getpid()
  return {
    "format": _FORMAT,
    "host": socket.gethostname(),
    "pid": pid,
    "boot_id": _boot_id(),
    "process_start_ticks": process_start_ticks(pid),
    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "argv": list(sys.argv if argv is None else argv),
  }


# ---------------------------------------------------------------------------- the handle


class WorkdirLock:
  """A held lock (or, for `gs://` workdirs and non-chief processes, a handle holding
  nothing: `held` is False). Use as a context manager or call `release()`."""

  def __init__(self, workdir, path=None, fd=None, info=None, took_over=None):
    self.workdir = workdir
    self.path = path
    self.info = info
    self.took_over = took_over  # the stale lock's record, if one was taken over
    self._fd = fd
    self._owner = os.getpid()

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    """Removes the lock file (if it is still ours) and drops the flock. Idempotent."""
    fd, self._fd = self._fd, None
    if fd is None or os.getpid() != self._owner:  # a forked child never releases
      return
    try:
      if _same_file(fd, self.path):
        os.unlink(self.path)
    except OSError as e:
      logger.warning("could not remove the workdir lock %s: %s", self.path, e)
    finally:
      os.close(fd)

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def __repr__(self) -> str:
    return f"WorkdirLock({str(self.path or self.workdir)!r}, held={self.held})"


# ---------------------------------------------------------------------------- acquiring


def _same_file(fd: int, path) -> bool:
  try:
    a, b = os.fstat(fd), os.stat(path)
  except FileNotFoundError:
    return False
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view) :]
  os.fsync(fd)


def _create(path: pathlib.Path, payload: bytes) -> int | None:
  """A new lock at `path`, complete and flocked before it is visible; None if one exists."""
  tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
  try:
    _write_all(fd, payload)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: nobody else has it
    try:
      os.link(tmp, path)
      return fd
    except FileExistsError:
      os.close(fd)
      return None
    except OSError as e:
      if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
        raise
    # No hard links here: create the lock itself exclusively (briefly visible unlocked and
    # empty; a reader that finds it so reports it unreadable and retries nothing).
    os.close(fd)
    fd = None
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
      return None
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _write_all(fd, payload)
    return fd
  except BaseException:
    if fd is not None:
      with contextlib.suppress(OSError):
        os.close(fd)
    raise
  finally:
    with contextlib.suppress(OSError):
      os.unlink(tmp)


def _replace(path: pathlib.Path, payload: bytes) -> int:
  """Atomically replaces the lock at `path` with ours (the caller holds the old one's flock)."""
  tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
  try:
    _write_all(fd, payload)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(tmp, path)
    return fd
  except BaseException:
    os.close(fd)
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def read_lock(path) -> dict | None:
  """The record in a lock file, or None if it is not one this module wrote."""
  try:
    info = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(info, dict) or info.get("format") != _FORMAT:
    return None
  if not isinstance(info.get("host"), str) or not isinstance(info.get("pid"), int):
    return None
  return info


def describe(info: dict) -> str:
  """'pid 123 on host h (started 2025-..., `python -m edsr_jax.main ...`)'."""
  argv = " ".join(str(a) for a in info.get("argv") or [])
  if len(argv) > 160:
    argv = argv[:157] + "..."
  details = ", ".join(
    x
    for x in (
      f"started {info['started']}" if info.get("started") else "",
      f"`{argv}`" if argv else "",
    )
    if x
  )
  return f"pid {info['pid']} on host {info['host']}" + (f" ({details})" if details else "")


def _stale_reason(info: dict) -> str | None:
  """Why a lock whose flock is free is stale; None if it cannot be called stale."""
  if info["host"] != socket.gethostname():
    return None  # another machine: nothing here can tell whether it still runs
  boot = _boot_id()
  if info.get("boot_id") and boot and info["boot_id"] != boot:
    return "this host has restarted since"
  pid = info["pid"]
  if not pid_alive(pid):
    if _process_state(pid) in ("Z", "X"):
      return f"pid {pid} is not running (it has exited; its parent has not reaped it yet)"
    return f"pid {pid} is not running"
  saved, now = info.get("process_start_ticks"), process_start_ticks(pid)
  if saved is not None and now is not None and saved != now:
    return f"pid {pid} is now another process (pid reused)"
  return None


def _busy_message(workdir, path, info: dict | None, why: str) -> str:
  holder = describe(info) if info else "another process"
  return (
    f"workdir {workdir} is in use by another training run: {holder}; {why}. One workdir "
    f"holds one run at a time: wait for that run to finish, stop it, or use another "
    f"workdir. If that run is no longer running, remove its lock: rm {path}"
  )


def is_remote(workdir) -> bool:
  return "://" in str(workdir)


def acquire(
  workdir: str | os.PathLike,
  *,
  is_chief: bool = True,
  argv=None,
  take_over: bool = False,
) -> WorkdirLock:
  """Takes `<workdir>/.run.lock` for this process (creating `workdir` if needed).

  Args:
    workdir: the run's workdir; `scheme://` paths are not locked (see the module doc).
    is_chief: False on processes other than 0 of a multi-process run: nothing is taken.
    argv: recorded in the lock (default `sys.argv`).
    take_over: take a lock that cannot be checked (written on another host) anyway.

  Raises:
    WorkdirBusyError: another run holds the workdir (the message names host and pid).
    WorkdirLockError: the lock cannot be created (workdir is a file, read-only, ...) or
      the lock file there is unreadable.
  """
  if is_remote(workdir):
    logger.warning(
      "workdir %s is on an object store: no run lock is taken (no atomic create-if-absent "
      "there); do not start a second run on this workdir while one is running",
      workdir,
    )
    return WorkdirLock(str(workdir))
  if not is_chief:
    return WorkdirLock(str(workdir))

  workdir_path = pathlib.Path(workdir)
  path = workdir_path / LOCK_NAME
  info = _this_process(argv)
  payload = (json.dumps(info, indent=2) + "\n").encode()
  if workdir_path.exists() and not workdir_path.is_dir():
    raise WorkdirLockError(f"workdir {workdir} exists and is not a folder")
  try:
    workdir_path.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
      fd = _create(path, payload)
      if fd is not None:
        return WorkdirLock(str(workdir), path, fd, info)
      try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
      except FileNotFoundError:
        continue  # released meanwhile
      try:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          held = read_lock(path)
          why = "it is running on this host"
          if held and held["host"] == socket.gethostname() and not pid_alive(held["pid"]):
            why = "its process has exited, but a process it started still holds the lock"
          raise WorkdirBusyError(_busy_message(workdir, path, held, why)) from None
        if not _same_file(fd, path):
          continue  # released or replaced between open and flock: look again
        held = read_lock(path)
        if held is None:
          raise WorkdirLockError(
            f"workdir {workdir}: {path} is not a readable run lock (not JSON written by "
            f"edsr_jax); if no training run is using this workdir, remove it: rm {path}"
          )
        reason = _stale_reason(held)
        if reason is None and not take_over:
          if held["host"] != socket.gethostname():
            why = "a lock from another host cannot be checked from here"
          else:
            why = (
              "that process is still running (but does not hold the lock's flock: a file "
              "system without working locks?)"
            )
          raise WorkdirBusyError(_busy_message(workdir, path, held, why))
        new_fd = _replace(path, payload)
        logger.warning(
          "workdir %s: took over the stale run lock of %s (%s)",
          workdir,
          describe(held),
          reason or "take_over requested",
        )
        return WorkdirLock(str(workdir), path, new_fd, info, took_over=held)
      finally:
        os.close(fd)
  except OSError as e:
    raise WorkdirLockError(
      f"workdir {workdir}: cannot take the run lock {path}: {e.strerror or e}"
    ) from None
  raise WorkdirLockError(f"workdir {workdir}: the run lock {path} kept changing; try again")
