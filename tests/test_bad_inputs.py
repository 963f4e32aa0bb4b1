"""Bad inputs and faults, each run as a user would meet it (issue 10).

Every case is a real subprocess in its own folder (`cwd=tmp_path`): a CLI
(`python -m edsr_jax.<cli> ...`) or a library call (`python -c`, see LIBRARY_RUNNER),
against real files: truncated and 16-bit PNGs, text named `.png`, dangling and looping
symlinks, wrong sizes, a corrupt checkpoint, read-only and full file systems (a bind mount
remounted read-only, a small tmpfs; skipped with the reason where this machine cannot
mount), runs interrupted with Ctrl-C, a workdir held by another run.

What every error case asserts:
- the exit status (1 for every user error and failed write);
- no `Traceback` on stdout or stderr;
- the error is exactly one line of stderr that starts with `error: `, and it is the last
  line of stderr (absl's INFO lines may come before it), matching every regex of the case
  (the key, file or path the problem is about);
- nothing already written changed: every path in `unchanged` has the same files with the
  same bytes and mtimes, and nothing in `absent` was created.
Cases that are not errors (a stale lock taken over, Ctrl-C, a finished run started again)
state their exit status and regexes searched in stdout + stderr, and must print no `error:`
line and no traceback.

Library cases (`cli=None`) run `snippet` through LIBRARY_RUNNER, which prints an exception
of edsr_jax's error family as `error: <message>` and exits 1, and lets anything else end in
a traceback: the library must raise its own error type, with a one-line message.

Exit statuses (README, "When something goes wrong"): 0 num_train_steps reached
(also when there was nothing left to train), 1 an error, 75 (EX_TEMPFAIL) stopped by
SIGTERM or Ctrl-C after saving a checkpoint, 130 a second Ctrl-C (stopped at once).

EDSR_BAD_INPUTS_REPORT=<file> appends one JSON line per case (id, passed, problems, exit
status, last stderr line) for triage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.py"
TIMEOUT = 300  # fixtures and follow-up runs
CASE_TIMEOUT = 120  # one case's command: a hang is reported as a problem of the case
# A smaller network than runlocal's (compiles and trains in a fraction of the time); every
# training command here uses it, so the shared checkpoint resumes.
TINY_MODEL = ("--config.model.num_blocks=1", "--config.model.num_features=8")
EX_TEMPFAIL = 75  # stopped by a signal after saving: run the same command to resume
SECOND_CTRL_C = 130

# Exceptions of edsr_jax's error family become one `error:` line; anything else is a bug
# and ends in a traceback. Until `edsr_jax/errors.py` exists, the family is the ValueError
# subclasses that edsr_jax modules define (ConfigError, ImageError, CheckpointError, ...).
LIBRARY_RUNNER = r"""
import sys
try:
  exec(compile(sys.argv[1], "<case>", "exec"), {"__name__": "__case__"})
except Exception as e:
  try:
    from edsr_jax import errors
    family = tuple(v for v in vars(errors).values()
                   if isinstance(v, type) and issubclass(v, Exception))
    ours = isinstance(e, family)
  except ImportError:
    ours = isinstance(e, ValueError) and type(e).__module__.startswith("edsr_jax.")
  if not ours:
    raise
  print(f"error: {e}", file=sys.stderr)
  sys.exit(1)
"""

# Holds a workdir's run lock the way a running training run does, until killed.
LOCK_HOLDER = """
import sys, time
from edsr_jax import workdir_lock
lock = workdir_lock.acquire(sys.argv[1], argv=["python", "-m", "edsr_jax.main", "(holder)"])
print("held", flush=True)
time.sleep(3600)
"""

TRAIN_LOSS_LINE = re.compile(r"\[(\d+)\] .*train/loss")


# JAX's persistent compilation cache, shared by this module's processes: most of them
# compile the same tiny network, which takes seconds per program on a small CPU.
_JAX_CACHE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_jax_cache(tmp_path_factory):
  _JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
  _JAX_CACHE["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  _JAX_CACHE["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  yield
  _JAX_CACHE.clear()


def _env() -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  env.update(_JAX_CACHE)
  return env


# ---------------------------------------------------------------------------- real files


def png(path, height=64, width=64, seed=0, mode="RGB") -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = (height, width, 3) if mode == "RGB" else (height, width)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
  return path


def png16(path, height=64, width=64) -> pathlib.Path:
  """A 16-bit RGB PNG, written by hand: Pillow opens it as 8-bit RGB, narrowing it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(16)
  pixels = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
  raw = b"".join(b"\0" + row.tobytes() for row in pixels)

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", header)
    + chunk(b"IDAT", zlib.compress(raw))
    + chunk(b"IEND", b"")
  )
  return path


def truncated(path, **kw) -> pathlib.Path:
  path = png(path, **kw)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return path


def text_file(path, content="these are my notes, not an image\n") -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(content)
  return path


def train_folder(ctx, name="train") -> pathlib.Path:
  """Two 64x64 photos: enough for runlocal (LR patch 24 at x2)."""
  folder = ctx.tmp / name
  png(folder / "a.png", seed=1)
  png(folder / "b.png", seed=2)
  return folder


def benchmark_set(ctx, hr=None) -> pathlib.Path:
  """bench/Tiny in the benchmark layout: HR/a.png 48x40 and LR_bicubic/X2/ax2.png."""
  root = ctx.tmp / "bench" / "Tiny"
  (hr or png)(root / "HR" / "a.png", height=40, width=48)
  png(root / "LR_bicubic" / "X2" / "ax2.png", height=20, width=24, seed=3)
  return root


def copy_checkpoint(ctx, dest="run") -> pathlib.Path:
  target = ctx.tmp / dest
  shutil.copytree(ctx.ckpt, target, symlinks=True)
  return target


def truncate_arrays(workdir) -> None:
  """Cuts every array data file of the latest checkpoint's state to 16 bytes."""
  state = pathlib.Path(workdir) / "checkpoints" / "2" / "state"
  files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for p in files:
    p.write_bytes(p.read_bytes()[:16])


class _RunsCode:
  def __reduce__(self):
    return os.system, ("touch pwned",)


def evil_pickle(ctx) -> pathlib.Path:
  """evil.pt: torch's zip layout, whose pickle calls os.system when unpickled."""
  path = ctx.tmp / "evil.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(_RunsCode(), 2))
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
  return path


# ---------------------------------------------------------------------------- mounts


def _mount(*args) -> None:
  subprocess.run(["mount", *map(str, args)], check=True, capture_output=True, text=True)


def _umount(path) -> None:
  if subprocess.run(["umount", str(path)], capture_output=True).returncode:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(ctx, path) -> pathlib.Path:
  """`path` (created, with whatever is in it now) made read-only with a bind mount."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  _mount("--bind", path, path)
  ctx.cleanup(lambda: _umount(path))
  _mount("-o", "remount,bind,ro", path)
  return path


def small_tmpfs(ctx, path, size: int) -> pathlib.Path:
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", path)
  ctx.cleanup(lambda: _umount(path))
  return path


def _allocated(path) -> int:
  """Bytes a copy of `path` takes on a tmpfs (whole pages per file)."""
  return sum(
    -(-p.stat().st_size // 4096) * 4096 for p in pathlib.Path(path).rglob("*") if p.is_file()
  )


@pytest.fixture(scope="session")
def can_mount(tmp_path_factory):
  """Skips mount cases with the reason where this machine does not allow mounting."""
  probe = tmp_path_factory.mktemp("mount-probe")
  tried = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True, text=True
  )
  if tried.returncode:
    pytest.skip(
      f"cannot mount here (uid {os.getuid()}: {tried.stderr.strip()}); read-only and full "
      "file systems need root, or run pytest under `unshare -rm` (user + mount namespaces)"
    )
  _umount(probe)


# ---------------------------------------------------------------------------- processes


def start_lock_holder(ctx, workdir) -> None:
  """A process on this host holding `workdir`'s run lock, as a running training would."""
  proc = subprocess.Popen(
    [sys.executable, "-c", LOCK_HOLDER, str(workdir)],
    cwd=ctx.tmp,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  ctx.cleanup(lambda: _kill(proc))
  assert proc.stdout.readline().strip() == "held", proc.stderr.read()
  ctx.vars.update(pid=proc.pid, host=socket.gethostname())


def _kill(proc) -> None:
  if proc.poll() is None:
    proc.kill()
  proc.wait(timeout=60)
  for stream in (proc.stdout, proc.stderr):
    if stream:
      stream.close()


def _wait_for(log: pathlib.Path, pattern: re.Pattern, proc, timeout=180) -> re.Match:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    match = pattern.search(log.read_text(errors="replace")) if log.exists() else None
    if match:
      return match
    if proc.poll() is not None:
      raise AssertionError(f"exited with {proc.returncode} first:\n{log.read_text()[-3000:]}")
    time.sleep(0.1)
  raise AssertionError(f"no {pattern.pattern!r} within {timeout} s")


def train_cmd(workdir, *extra) -> list[str]:
  return [
    sys.executable,
    "-m",
    "edsr_jax.main",
    f"--config={DEMO}:runlocal",
    f"--workdir={workdir}",
    *TINY_MODEL,
    *extra,
  ]


LONG_RUN = (
  "--config.num_train_steps=100000",
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=100000",
  "--config.eval_every_steps=100000",
)


def start_training(ctx, workdir) -> subprocess.Popen:
  """A long training run on `workdir`, returned once it is past its first steps."""
  log = ctx.tmp / f"first-{pathlib.Path(workdir).name}.log"
  err = open(log, "w")  # noqa: SIM115 (closed by the cleanup)
  proc = subprocess.Popen(
    train_cmd(workdir, *LONG_RUN),
    cwd=ctx.tmp,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=err,
    start_new_session=True,
  )
  ctx.cleanup(err.close)
  ctx.cleanup(lambda: _kill(proc))
  _wait_for(log, TRAIN_LOSS_LINE, proc)
  ctx.vars.update(pid=proc.pid, host=socket.gethostname())
  return proc


def ctrl_c(times: int):
  """A driver: starts the command, waits for training steps, then Ctrl-C `times` times
  (SIGINT to the process group, as a terminal sends it)."""

  def drive(ctx, cmd) -> subprocess.CompletedProcess:
    out_path, err_path = ctx.tmp / "stdout.log", ctx.tmp / "stderr.log"
    with open(out_path, "w") as out, open(err_path, "w") as err:
      proc = subprocess.Popen(
        cmd, cwd=ctx.tmp, env=_env(), stdout=out, stderr=err, start_new_session=True
      )
      ctx.cleanup(lambda: _kill(proc))
      _wait_for(err_path, TRAIN_LOSS_LINE, proc)
      for i in range(times):
        if i:  # while the first one's save runs (a fraction of a second for this network)
          time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
      try:
        status = proc.wait(timeout=CASE_TIMEOUT)
      except subprocess.TimeoutExpired:  # reported as a hang
        proc.kill()
        proc.wait()
        status = None
    return subprocess.CompletedProcess(cmd, status, out_path.read_text(), err_path.read_text())

  return drive


# ---------------------------------------------------------------------------- cases


class Ctx:
  """A case's folder, the shared checkpoint, values for the placeholders, and cleanups."""

  def __init__(self, tmp: pathlib.Path, ckpt: pathlib.Path | None):
    self.tmp, self.ckpt, self.vars = tmp, ckpt, {}
    self._cleanups: list[Callable] = []

  def cleanup(self, fn: Callable) -> None:
    self._cleanups.append(fn)

  def run_cleanups(self) -> None:
    while self._cleanups:
      try:
        self._cleanups.pop()()
      except Exception as e:  # keep cleaning up (unmounting matters most)
        print(f"cleanup failed: {e!r}", file=sys.stderr)

  def values(self) -> dict:
    return {"tmp": self.tmp, "ckpt": self.ckpt, "demo": DEMO, "repo": REPO, **self.vars}

  def fill(self, text: str) -> str:
    return text.format(**{k: str(v) for k, v in self.values().items()})

  def fill_regex(self, pattern: str) -> str:
    return pattern.format(**{k: re.escape(str(v)) for k, v in self.values().items()})


@dataclasses.dataclass
class Case:
  """One bad input. `args` and `snippet` take {tmp} {ckpt} {demo} {repo} and the setup's
  `ctx.vars`; so does `expect` (regexes, values escaped; write `{{`/`}}` for braces)."""

  id: str
  cli: str | None  # edsr_jax.<cli>; None: a library snippet
  args: tuple[str, ...] = ()
  expect: tuple[str, ...] = ()
  setup: Callable | None = None
  unchanged: tuple[str, ...] = ()  # relative to the case folder, or "{ckpt}..."
  absent: tuple[str, ...] = ()  # must not exist afterwards
  status: int = 1
  snippet: str = ""
  drive: Callable | None = None  # runs the command itself (signals, background runs)
  check: Callable | None = None  # more assertions: check(ctx, completed_process)
  needs: tuple[str, ...] = ()  # "ckpt", "mount", "torch"
  env: dict = dataclasses.field(default_factory=dict)  # on top of _env()


def main_case(id, *extra, workdir="{tmp}/run", config="{demo}:runlocal", **kw) -> Case:
  args = (f"--config={config}", f"--workdir={workdir}", *TINY_MODEL, *extra)
  return Case(id, "main", args, **kw)


# Folder data (two steps, should the bad file be accepted).
FOLDER = (
  "--config.data.source=folder",
  "--config.data.train_dir=train",
  "--config.num_train_steps=2",
)


def _add(*makers):
  """A setup that runs each maker(ctx)."""

  def setup(ctx):
    for make in makers:
      make(ctx)

  return setup


# -- checks that need more than the table's columns


def _saved_step_checkpoint(ctx, proc):
  (step,) = re.findall(r"step (\d+)", proc.stderr.strip().splitlines()[-1])[:1]
  step_dir = ctx.tmp / "run" / "checkpoints" / step
  assert (step_dir / "state").is_dir() and (step_dir / "config").is_dir(), step_dir


def _resumes(steps):
  def check(ctx, proc):
    again = subprocess.run(
      train_cmd(ctx.tmp / "run", f"--config.num_train_steps={steps}"),
      cwd=ctx.tmp,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
    )
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]

  return check


def _resumes_after_space_is_freed(ctx, proc):
  _mount("-o", "remount,size=64m", ctx.tmp / "full")
  again = subprocess.run(
    train_cmd(ctx.tmp / "full" / "run", "--config.num_train_steps=3"),
    cwd=ctx.tmp,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from \S+ at step 2\b", again.stderr), again.stderr[-3000:]


def _import_retry_succeeds(ctx, proc):
  # The failed import must leave nothing that blocks the same command once there is room.
  _mount("-o", "remount,size=16m", ctx.tmp / "small")
  again = subprocess.run(
    [sys.executable, "-m", "edsr_jax.import_torch", *map(ctx.fill, IMPORT_TO_SMALL)],
    cwd=ctx.tmp,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert again.returncode == 0, again.stderr[-3000:]


def _unfinished_save_removed(ctx, proc):
  names = sorted(p.name for p in (ctx.tmp / "run" / "checkpoints").iterdir())
  assert names == ["2", "3"], names


def _lock_released(ctx, proc):
  assert not (ctx.tmp / "run" / ".run.lock").exists()


def _nothing_executed(ctx, proc):
  assert not (ctx.tmp / "pwned").exists(), "the pickle's os.system ran"


# -- setups


def _disk_full(ctx):
  # A tmpfs with room for a copy of the 2-step run and half a checkpoint more: the next
  # save does not fit (tmpfs counts whole pages per file, as _allocated does).
  room = _allocated(ctx.ckpt) + _allocated(ctx.ckpt / "checkpoints" / "2") // 2
  small_tmpfs(ctx, ctx.tmp / "full", room)
  shutil.copytree(ctx.ckpt, ctx.tmp / "full" / "run", symlinks=True)


def _unfinished_save(ctx):
  # What a save cut short (a second Ctrl-C, a kill, a full disk) leaves: orbax's temporary
  # step folder, half written.
  run = copy_checkpoint(ctx)
  partial = run / "checkpoints" / "4.orbax-checkpoint-tmp"
  shutil.copytree(run / "checkpoints" / "2" / "config", partial / "config")


def _killed_holder(ctx):
  start_lock_holder(ctx, ctx.tmp / "run")
  os.kill(ctx.vars["pid"], signal.SIGKILL)
  time.sleep(0.5)
  assert (ctx.tmp / "run" / ".run.lock").exists()


def _torch_file(name, dest=None):
  def setup(ctx):
    shutil.copy(ctx.vars["torch_files"] / name, ctx.tmp / (dest or name))

  return setup


def _shipped_copy(ctx):
  """A copy of the shipped x2 weights (an export: checkpoints/0 and export.json)."""
  shutil.copytree(REPO / "pretrained" / "edsr_291_x2", ctx.tmp / "shipped")


def sigterm_during_start_up(ctx, cmd) -> subprocess.CompletedProcess:
  """A driver: SIGTERM once training has loaded its data, while it builds, restores and
  compiles (importing TensorFlow for the summary writer alone takes seconds)."""
  out_path, err_path = ctx.tmp / "stdout.log", ctx.tmp / "stderr.log"
  with open(out_path, "w") as out, open(err_path, "w") as err:
    proc = subprocess.Popen(cmd, cwd=ctx.tmp, env=_env(), stdout=out, stderr=err)
    ctx.cleanup(lambda: _kill(proc))
    _wait_for(err_path, re.compile(r"training images: \d+"), proc)
    assert not TRAIN_LOSS_LINE.search(err_path.read_text()), "already training"
    proc.send_signal(signal.SIGTERM)
    try:
      status = proc.wait(timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      status = None
  return subprocess.CompletedProcess(cmd, status, out_path.read_text(), err_path.read_text())


def _nothing_trained(ctx, proc):
  assert not (ctx.tmp / "run" / ".run.lock").exists(), "the workdir lock is left behind"
  assert not TRAIN_LOSS_LINE.search(proc.stderr), "it trained before stopping"
  steps = ctx.tmp / "run" / "checkpoints"
  assert not steps.exists() or not list(steps.iterdir()), list(steps.iterdir())


def _tiny_val_set(ctx):
  train_folder(ctx)
  png(ctx.tmp / "val" / "big.png", height=48, width=48)
  png(ctx.tmp / "val" / "a_tiny.png", height=12, width=14, seed=5)


def _changes_recorded(ctx, proc):
  lines = (ctx.tmp / "run" / "config_changes.jsonl").read_text().splitlines()
  record = json.loads(lines[-1])
  assert record["step"] == 2 and record["changes"]["batch_size"] == [4, 6], record
  assert json.loads((ctx.tmp / "run" / "config.json").read_text())["batch_size"] == 6


def _events_room(ctx):
  small_tmpfs(ctx, ctx.tmp / "full", 600 * 1024)


IMPORT_TO_SMALL = ("--input=good.pt", "--output={tmp}/small/out", "--res_scale=1")
TINY_EDSR_FLAGS = ("--res_scale=1",)

CASES = [
  # ---------------------------------------------------------------- main: config and flags
  main_case("main-unknown-key", "--config.foo=1", expect=(r"\bfoo\b",)),
  main_case(
    "main-typo-key-suggests", "--config.model.num_block=4", expect=(r"num_block\b", r"num_blocks")
  ),
  main_case("main-config-missing", config="nope.py", expect=(r"nope\.py",), absent=("run",)),
  main_case(
    "main-config-syntax-error",
    config="broken.py",
    setup=lambda ctx: text_file(ctx.tmp / "broken.py", "def get_config(:\n  return 1\n"),
    expect=(r"broken\.py", r"(?i)syntax|line 1"),
    absent=("run",),
  ),
  main_case("main-config-bad-arg", config="{demo}:foo", expect=(r"\bfoo\b",), absent=("run",)),
  main_case(
    "main-config-without-get-config",
    config="empty.py",
    setup=lambda ctx: text_file(ctx.tmp / "empty.py", "x = 1\n"),
    expect=(r"empty\.py", r"get_config"),
  ),
  main_case(
    "main-value-not-an-int", "--config.num_train_steps=ten", expect=(r"num_train_steps", r"ten")
  ),
  Case(
    "main-missing-workdir", "main", ("--config={demo}:runlocal",), expect=(r"--workdir|workdir",)
  ),
  main_case("main-extra-argument", "extra_thing", expect=(r"extra_thing",)),
  main_case("main-init-from-missing", "--config.init_from=nope_run", expect=(r"nope_run",)),
  main_case(
    "main-workdir-is-a-file",
    workdir="afile",
    setup=lambda ctx: text_file(ctx.tmp / "afile"),
    expect=(r"afile",),
    unchanged=("afile",),
  ),
  main_case(
    "main-workdir-read-only",
    workdir="{tmp}/ro",
    setup=lambda ctx: read_only(ctx, ctx.tmp / "ro"),
    expect=(r"ro\b", r"(?i)read-only"),
    needs=("mount",),
  ),
  # ---------------------------------------------------------------- main: data
  main_case(
    "main-cache-dir-is-a-file",
    *FOLDER,
    "--config.data.cache_dir=afile",
    setup=_add(train_folder, lambda ctx: text_file(ctx.tmp / "afile")),
    expect=(r"afile", r"cache_dir"),
    unchanged=("afile", "train"),
  ),
  main_case(
    "main-cache-dir-read-only",
    *FOLDER,
    "--config.data.cache_dir=ro",
    setup=_add(train_folder, lambda ctx: read_only(ctx, ctx.tmp / "ro")),
    expect=(r"\bro\b", r"(?i)read-only"),
    needs=("mount",),
  ),
  main_case(
    "main-image-1x1",
    *FOLDER,
    setup=_add(train_folder, lambda ctx: png(ctx.tmp / "train" / "tiny.png", 1, 1)),
    expect=(r"tiny\.png",),
    unchanged=("train",),
  ),
  main_case(
    "main-image-16-bit",
    *FOLDER,
    setup=_add(train_folder, lambda ctx: png16(ctx.tmp / "train" / "deep.png")),
    expect=(r"deep\.png", r"16"),
    unchanged=("train",),
  ),
  main_case(
    "main-dangling-symlink",
    *FOLDER,
    setup=_add(train_folder, lambda ctx: os.symlink("gone.png", ctx.tmp / "train" / "link.png")),
    expect=(r"link\.png",),
    unchanged=("train",),
  ),
  main_case(
    "main-symlink-loop",
    *FOLDER,
    setup=_add(train_folder, lambda ctx: os.symlink("loop.png", ctx.tmp / "train" / "loop.png")),
    expect=(r"loop\.png",),
  ),
  main_case(
    "main-text-named-png",
    *FOLDER,
    setup=_add(train_folder, lambda ctx: text_file(ctx.tmp / "train" / "notes.png")),
    expect=(r"notes\.png",),
  ),
  main_case(
    "main-truncated-png",
    *FOLDER,
    setup=_add(train_folder, lambda ctx: truncated(ctx.tmp / "train" / "cut.png")),
    expect=(r"cut\.png",),
  ),
  main_case(
    "main-lr-hr-size-mismatch",
    "--config.data.source=folder",
    "--config.data.train_dir=set",
    setup=lambda ctx: (
      png(ctx.tmp / "set" / "HR" / "a.png"),
      png(ctx.tmp / "set" / "LR_bicubic" / "X2" / "ax2.png", 30, 30),
    ),
    expect=(r"ax2\.png", r"32x32"),
  ),
  main_case(
    "main-empty-folder",
    "--config.data.source=folder",
    "--config.data.train_dir=empty",
    setup=lambda ctx: (ctx.tmp / "empty").mkdir(),
    expect=(r"empty",),
  ),
  # ---------------------------------------------------------------- main: the workdir
  main_case(
    "main-checkpoints-is-a-file",
    setup=lambda ctx: text_file(ctx.tmp / "run" / "checkpoints"),
    expect=(r"checkpoints",),
    unchanged=("run/checkpoints",),
  ),
  main_case(
    "main-corrupt-checkpoint",
    "--config.num_train_steps=4",
    setup=lambda ctx: truncate_arrays(copy_checkpoint(ctx)),
    expect=(r"checkpoints/2",),
    unchanged=("run/checkpoints",),
    needs=("ckpt",),
  ),
  main_case(
    "main-busy-workdir-second-run",
    "--config.num_train_steps=2",
    setup=lambda ctx: start_training(ctx, ctx.tmp / "run"),
    expect=(r"run\b", r"\b{host}\b", r"\b{pid}\b"),
    unchanged=("run/config.json", "run/checkpoints"),
  ),
  main_case(
    "main-busy-workdir-other-learning-rate",
    "--config.learning_rate=2e-3",
    "--config.num_train_steps=4",
    setup=lambda ctx: start_lock_holder(ctx, copy_checkpoint(ctx)),
    expect=(r"run\b", r"\b{host}\b", r"\b{pid}\b"),
    unchanged=("run/config.json", "run/checkpoints", "run/.run.lock"),
    needs=("ckpt",),
  ),
  main_case(
    "main-stale-lock-of-killed-run",
    "--config.num_train_steps=2",
    setup=_killed_holder,
    status=0,
    expect=(r"(?i)stale.*lock.*\b{pid}\b",),
    check=_lock_released,
  ),
  main_case(
    "main-ctrl-c-saves",
    *LONG_RUN,
    drive=ctrl_c(1),
    status=EX_TEMPFAIL,
    expect=(r"\bstep \d+", r"(?i)\bsaved?\b", r"(?i)\bresume"),
    check=_saved_step_checkpoint,
  ),
  main_case(
    "main-ctrl-c-twice-stops-and-resumes",
    *LONG_RUN,
    drive=ctrl_c(2),
    status=SECOND_CTRL_C,
    expect=(r"(?i)interrupt|ctrl-c|sigint",),
    check=_resumes(3),
  ),
  main_case(
    "main-disk-full-during-save",
    "--config.num_train_steps=4",
    workdir="{tmp}/full/run",
    setup=_disk_full,
    expect=(r"(?i)no space|disk.*full", r"full/run"),
    unchanged=("full/run/checkpoints/2",),
    check=_resumes_after_space_is_freed,
    needs=("ckpt", "mount"),
  ),
  main_case(
    "main-unfinished-save-left-behind",
    "--config.num_train_steps=3",
    setup=_unfinished_save,
    status=0,
    expect=(r"resumed from \S+ at step 2\b",),
    check=_unfinished_save_removed,
    needs=("ckpt",),
  ),
  main_case(
    "main-resume-past-num-train-steps",
    "--config.num_train_steps=1",
    setup=copy_checkpoint,
    status=0,
    expect=(r"(?i)nothing (left )?to train|already (at|past) step 2",),
    unchanged=("run/checkpoints",),
    needs=("ckpt",),
  ),
  # ---------------------------------------------------------------- main: round 3
  main_case(
    "main-workdir-holds-exported-weights",
    "--config.num_train_steps=2",
    workdir="shipped",
    setup=_shipped_copy,
    expect=(r"shipped", r"export\.json", r"init_from=\S*shipped", r"new workdir"),
    unchanged=("shipped",),
  ),
  main_case(
    "main-out-of-memory-in-the-train-step",
    # Hundreds of GB of activations: refused at once by any machine's allocator.
    "--config.batch_size=50000",
    "--config.patch_size=16",
    "--config.model.num_features=512",
    "--config.num_train_steps=2",
    expect=(r"(?i)out of memory", r"batch_size=50000", r"patch_size=16", r"lower"),
    absent=("run/checkpoints/1", "run/checkpoints/2"),
  ),
  main_case(
    "main-sigterm-during-start-up",
    "--config.num_train_steps=5",
    drive=sigterm_during_start_up,
    status=EX_TEMPFAIL,
    expect=(r"SIGTERM", r"(?i)start-up", r"(?i)nothing (new )?to save", r"(?i)resume"),
    check=_nothing_trained,
  ),
  main_case(
    "main-val-image-too-small-for-ssim",
    *FOLDER,
    "--config.data.val_dir=val",
    setup=_tiny_val_set,
    expect=(r"a_tiny", r"14x12", r"(?i)ssim", r"15x15"),
    absent=("run",),
  ),
  main_case(
    "main-resume-with-another-batch-size",
    "--config.batch_size=6",
    "--config.num_train_steps=3",
    setup=copy_checkpoint,
    status=0,
    expect=(r"config\.batch_size=6 \(the checkpoint had 4\)", r"config_changes\.jsonl"),
    check=_changes_recorded,
    needs=("ckpt",),
  ),
  main_case(
    "main-disk-full-with-summaries",
    "--config.num_train_steps=20",
    "--config.eval_every_steps=1",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=1000",
    workdir="{tmp}/full/run",
    setup=_events_room,
    expect=(r"TensorBoard summaries", r"full/run", r"(?i)no space"),
    needs=("mount",),
  ),
  main_case(
    "main-jax-platforms-without-backend",
    "--config.num_train_steps=2",
    env={"JAX_PLATFORMS": "cuda"},
    expect=(r"JAX_PLATFORMS='cuda'", r"(?i)unset JAX_PLATFORMS"),
    absent=("run",),
  ),
  Case(
    "evaluate-no-cpu-devices",
    "evaluate",
    ("--checkpoint={repo}/pretrained/edsr_291_x2", "--benchmark_dir=bench", "--datasets=Tiny"),
    setup=benchmark_set,
    env={"JAX_NUM_CPU_DEVICES": "0"},
    expect=(r"JAX_NUM_CPU_DEVICES='0'", r"at least 1"),
  ),
  Case(
    "upscale-checkpoint-inside-a-step",
    "upscale",
    ("--checkpoint={ckpt}/checkpoints/2/state", "--output_dir=out", "in.png"),
    setup=lambda ctx: png(ctx.tmp / "in.png", height=20, width=24),
    status=0,
    expect=(r"wrote 1 image",),
    needs=("ckpt",),
  ),
  # ---------------------------------------------------------------- export to other runtimes
  Case(
    "export-unknown-format",
    "export",
    ("--checkpoint=shipped", "--format=keras", "--output=model.keras"),
    setup=_shipped_copy,
    expect=(r"format", r"keras"),
    absent=("model.keras",),
  ),
  Case(
    "export-onnx-output-exists",
    "export",
    ("--checkpoint=shipped", "--format=onnx", "--output=model.onnx"),
    setup=_add(_shipped_copy, lambda ctx: text_file(ctx.tmp / "model.onnx", "my model\n")),
    expect=(r"model\.onnx", r"exists", r"--overwrite"),
    unchanged=("model.onnx", "shipped"),
  ),
  Case(
    "export-onnx-inside-the-run",
    "export",
    ("--checkpoint=shipped", "--format=onnx", "--output=shipped/checkpoints/model.onnx"),
    setup=_shipped_copy,
    expect=(r"shipped", r"(?i)folder of its own"),
    unchanged=("shipped",),
  ),
  Case(
    "export-tflite-not-a-trained-run",
    "export",
    ("--checkpoint=notes", "--format=tflite", "--output=model.tflite"),
    setup=lambda ctx: text_file(ctx.tmp / "notes" / "readme.txt"),
    expect=(r"notes", r"(?i)neither a training workdir"),
    absent=("model.tflite",),
  ),
  Case(
    "export-onnx-scale-not-served",
    "export",
    ("--checkpoint=shipped", "--format=onnx", "--scale=3", "--output=model.onnx"),
    setup=_shipped_copy,
    expect=(r"--scale", r"\b3\b", r"x2"),
    absent=("model.onnx",),
  ),
  Case(
    "upscale-onnxruntime-not-an-onnx-file",
    "upscale",
    ("--checkpoint=shipped", "--runtime=onnxruntime", "--output_dir=out", "in.png"),
    setup=_add(_shipped_copy, lambda ctx: png(ctx.tmp / "in.png", height=20, width=24)),
    expect=(r"shipped", r"(?i)not a model exported"),
    absent=("out",),
  ),
  # ---------------------------------------------------------------- demo
  Case(
    "demo-unknown-key",
    "demo",
    ("--config={demo}:runlocal", "--workdir={tmp}/run", "--config.foo=1"),
    expect=(r"\bfoo\b",),
  ),
  # ---------------------------------------------------------------- evaluate
  Case(
    "evaluate-checkpoint-is-a-file",
    "evaluate",
    ("--checkpoint=afile", "--benchmark_dir=bench", "--datasets=Tiny"),
    setup=_add(benchmark_set, lambda ctx: text_file(ctx.tmp / "afile")),
    expect=(r"afile",),
  ),
  Case(
    "evaluate-corrupt-checkpoint",
    "evaluate",
    ("--checkpoint={tmp}/run", "--benchmark_dir=bench", "--datasets=Tiny"),
    setup=_add(benchmark_set, lambda ctx: truncate_arrays(copy_checkpoint(ctx))),
    expect=(r"checkpoints/2",),
    unchanged=("run",),
    needs=("ckpt",),
  ),
  Case(
    "evaluate-save-images-read-only",
    "evaluate",
    ("--checkpoint={ckpt}", "--benchmark_dir=bench", "--datasets=Tiny", "--save_images=ro/sr"),
    setup=_add(benchmark_set, lambda ctx: read_only(ctx, ctx.tmp / "ro")),
    expect=(r"ro/sr", r"(?i)read-only"),
    needs=("ckpt", "mount"),
  ),
  Case(
    "evaluate-save-images-is-a-file",
    "evaluate",
    ("--checkpoint={ckpt}", "--benchmark_dir=bench", "--datasets=Tiny", "--save_images=afile"),
    setup=_add(benchmark_set, lambda ctx: text_file(ctx.tmp / "afile")),
    expect=(r"afile",),
    unchanged=("afile",),
    needs=("ckpt",),
  ),
  Case(
    "evaluate-unknown-dataset",
    "evaluate",
    ("--checkpoint={ckpt}", "--benchmark_dir=bench", "--datasets=Set99"),
    setup=benchmark_set,
    expect=(r"Set99",),
    needs=("ckpt",),
  ),
  Case(
    "evaluate-scale-not-served",
    "evaluate",
    ("--checkpoint={ckpt}", "--benchmark_dir=bench", "--datasets=Tiny", "--scales=3"),
    setup=benchmark_set,
    expect=(r"x2", r"3"),
    needs=("ckpt",),
  ),
  Case(
    "evaluate-hr-16-bit",
    "evaluate",
    ("--checkpoint={ckpt}", "--benchmark_dir=bench", "--datasets=Tiny"),
    setup=lambda ctx: benchmark_set(ctx, hr=png16),
    expect=(r"HR/a\.png", r"16"),
    needs=("ckpt",),
  ),
  # ---------------------------------------------------------------- upscale
  Case(
    "upscale-checkpoint-missing",
    "upscale",
    ("--checkpoint=nope_run", "--output_dir=out", "small.png"),
    setup=lambda ctx: png(ctx.tmp / "small.png", 20, 24),
    expect=(r"nope_run",),
    absent=("out",),
  ),
  Case(
    "upscale-relative-checkpoint-works",
    "upscale",
    ("--checkpoint=run", "--output_dir=out", "small.png"),
    setup=_add(copy_checkpoint, lambda ctx: png(ctx.tmp / "small.png", 20, 24)),
    status=0,
    expect=(r"wrote 1 image",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-unfinished-checkpoint",
    "upscale",
    ("--checkpoint={tmp}/run", "--output_dir=out", "small.png"),
    setup=lambda ctx: (
      png(ctx.tmp / "small.png", 20, 24),
      (copy_checkpoint(ctx) / "checkpoints" / "2").rename(
        ctx.tmp / "run" / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
      ),
    ),
    expect=(r"run\b", r"(?i)finished|unfinished|incomplete"),
    unchanged=("run",),
    absent=("out",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-output-dir-read-only",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=ro", "small.png"),
    setup=lambda ctx: (png(ctx.tmp / "small.png", 20, 24), read_only(ctx, ctx.tmp / "ro")),
    expect=(r"\bro\b", r"(?i)read-only"),
    needs=("ckpt", "mount"),
  ),
  Case(
    "upscale-output-dir-is-a-file",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=afile", "small.png"),
    setup=lambda ctx: (png(ctx.tmp / "small.png", 20, 24), text_file(ctx.tmp / "afile")),
    expect=(r"afile",),
    unchanged=("afile",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-scale-not-served",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=out", "--scale=3", "small.png"),
    setup=lambda ctx: png(ctx.tmp / "small.png", 20, 24),
    expect=(r"(?i)scale", r"3"),
    absent=("out",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-input-16-bit",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=out", "deep.png"),
    setup=lambda ctx: png16(ctx.tmp / "deep.png", 20, 24),
    expect=(r"deep\.png", r"16"),
    absent=("out/deep_x2_SR.png",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-input-not-an-image",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=out", "notes.png"),
    setup=lambda ctx: text_file(ctx.tmp / "notes.png"),
    expect=(r"notes\.png",),
    absent=("out/notes_x2_SR.png",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-dangling-symlink-in-folder",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=out", "in"),
    setup=lambda ctx: (
      png(ctx.tmp / "in" / "a.png", 20, 24),
      os.symlink("gone.png", ctx.tmp / "in" / "link.png"),
    ),
    expect=(r"link\.png",),
    needs=("ckpt",),
  ),
  Case(
    "upscale-no-inputs",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=out"),
    expect=(r"(?i)input",),
  ),
  Case(
    "upscale-missing-output-dir-flag",
    "upscale",
    ("--checkpoint={ckpt}", "small.png"),
    setup=lambda ctx: png(ctx.tmp / "small.png", 20, 24),
    expect=(r"output_dir",),
  ),
  Case(
    "upscale-negative-tile-size",
    "upscale",
    ("--checkpoint={ckpt}", "--output_dir=out", "--tile_size=-1", "small.png"),
    setup=lambda ctx: png(ctx.tmp / "small.png", 20, 24),
    expect=(r"tile_size",),
  ),
  # ---------------------------------------------------------------- score
  Case(
    "score-sr-half-size",
    "score",
    ("--hr_dir=hr", "--sr_dir=sr", "--scale=2"),
    setup=lambda ctx: (
      png(ctx.tmp / "hr" / "a.png", 40, 48),
      png(ctx.tmp / "sr" / "a_x2_SR.png", 20, 24),
    ),
    expect=(r"a_x2_SR\.png", r"(?i)size|shape"),
  ),
  Case(
    "score-sr-larger-than-hr",
    "score",
    ("--hr_dir=hr", "--sr_dir=sr", "--scale=2"),
    setup=lambda ctx: (
      png(ctx.tmp / "hr" / "a.png", 40, 48),
      png(ctx.tmp / "sr" / "a_x2_SR.png", 44, 52),
    ),
    expect=(r"a_x2_SR\.png",),
  ),
  Case(
    "score-sr-missing",
    "score",
    ("--hr_dir=hr", "--sr_dir=sr", "--scale=2"),
    setup=lambda ctx: (png(ctx.tmp / "hr" / "a.png", 40, 48), (ctx.tmp / "sr").mkdir()),
    expect=(r"a_x2_SR\.png",),
  ),
  Case(
    "score-sr-16-bit",
    "score",
    ("--hr_dir=hr", "--sr_dir=sr", "--scale=2"),
    setup=lambda ctx: (
      png(ctx.tmp / "hr" / "a.png", 40, 48),
      png16(ctx.tmp / "sr" / "a_x2_SR.png", 40, 48),
    ),
    expect=(r"a_x2_SR\.png", r"16|8 bits"),
  ),
  Case(
    "score-bad-sr-pattern",
    "score",
    ("--hr_dir=hr", "--sr_dir=sr", "--scale=2", "--sr_pattern={{nme}}.png"),
    setup=lambda ctx: (png(ctx.tmp / "hr" / "a.png", 40, 48), (ctx.tmp / "sr").mkdir()),
    expect=(r"sr_pattern",),
  ),
  Case(
    "score-scale-zero", "score", ("--hr_dir=hr", "--sr_dir=sr", "--scale=0"), expect=(r"scale",)
  ),
  Case("score-missing-sr-dir-flag", "score", ("--hr_dir=hr", "--scale=2"), expect=(r"sr_dir",)),
  Case(
    "score-output-json-read-only",
    "score",
    ("--hr_dir=hr", "--sr_dir=sr", "--scale=2", "--output_json=ro/scores.json"),
    setup=lambda ctx: (
      png(ctx.tmp / "hr" / "a.png", 40, 48),
      png(ctx.tmp / "sr" / "a_x2_SR.png", 40, 48, seed=5),
      read_only(ctx, ctx.tmp / "ro"),
    ),
    expect=(r"scores\.json", r"(?i)read-only"),
    needs=("mount",),
  ),
  # ---------------------------------------------------------------- import_torch
  Case(
    "import-not-a-torch-file",
    "import_torch",
    ("--input=junk.pt", "--output=out"),
    setup=lambda ctx: (ctx.tmp / "junk.pt").write_bytes(os.urandom(4096)),
    expect=(r"junk\.pt",),
    absent=("out",),
  ),
  Case(
    "import-pickle-runs-os-system",
    "import_torch",
    ("--input=evil.pt", "--output=out"),
    setup=evil_pickle,
    expect=(r"evil\.pt", r"system"),
    absent=("out",),
    check=_nothing_executed,
  ),
  Case(
    "import-nan-weights",
    "import_torch",
    ("--input=nan.pt", "--output={tmp}/out", *TINY_EDSR_FLAGS),
    setup=_torch_file("nan.pt"),
    expect=(r"nan\.pt", r"body\.0\.body\.0\.weight", r"(?i)nan|finite"),
    absent=("out",),
    needs=("torch",),
  ),
  Case(
    "import-inf-weights",
    "import_torch",
    ("--input=inf.pt", "--output={tmp}/out", *TINY_EDSR_FLAGS),
    setup=_torch_file("inf.pt"),
    expect=(r"inf\.pt", r"tail\.0\.0\.bias", r"(?i)inf|finite"),
    absent=("out",),
    needs=("torch",),
  ),
  Case(
    "import-wrong-shape",
    "import_torch",
    ("--input=shape.pt", "--output=out", *TINY_EDSR_FLAGS),
    setup=_torch_file("shape.pt"),
    expect=(r"body\.1\.body\.0\.weight",),
    absent=("out",),
    needs=("torch",),
  ),
  Case(
    "import-truncated-file",
    "import_torch",
    ("--input=cut.pt", "--output=out", *TINY_EDSR_FLAGS),
    setup=_torch_file("cut.pt"),
    expect=(r"cut\.pt",),
    absent=("out",),
    needs=("torch",),
  ),
  Case(
    "import-output-is-a-file",
    "import_torch",
    ("--input=good.pt", "--output=afile", *TINY_EDSR_FLAGS),
    setup=_add(_torch_file("good.pt"), lambda ctx: text_file(ctx.tmp / "afile")),
    expect=(r"afile",),
    unchanged=("afile",),
    needs=("torch",),
  ),
  Case(
    "import-output-disk-full-then-retry",
    "import_torch",
    IMPORT_TO_SMALL,
    setup=_add(_torch_file("good.pt"), lambda ctx: small_tmpfs(ctx, ctx.tmp / "small", 48 * 1024)),
    expect=(r"small/out", r"(?i)no space|disk.*full"),
    check=_import_retry_succeeds,
    needs=("torch", "mount"),
  ),
  Case(
    "import-output-holds-checkpoints",
    "import_torch",
    ("--input=good.pt", "--output={tmp}/run", *TINY_EDSR_FLAGS),
    setup=_add(_torch_file("good.pt"), copy_checkpoint),
    expect=(r"run/checkpoints", r"--overwrite"),
    unchanged=("run",),
    needs=("torch", "ckpt"),
  ),
  Case(
    "import-scale-contradicts-file",
    "import_torch",
    ("--input=good.pt", "--output=out", "--scale=3", *TINY_EDSR_FLAGS),
    setup=_torch_file("good.pt"),
    expect=(r"scale",),
    absent=("out",),
    needs=("torch",),
  ),
  Case(
    "import-input-missing",
    "import_torch",
    ("--input=nope.pt", "--output=out"),
    expect=(r"nope\.pt",),
    absent=("out",),
  ),
  # ---------------------------------------------------------------- the library API
  Case(
    "lib-load-missing-checkpoint",
    None,
    snippet="from edsr_jax import inference\ninference.load('nope_run')",
    expect=(r"nope_run",),
  ),
  Case(
    "lib-config-file-missing",
    None,
    snippet="from edsr_jax import config_lib\nconfig_lib.load_config_file('nope.py')",
    expect=(r"nope\.py",),
  ),
  Case(
    "lib-config-file-syntax-error",
    None,
    snippet="from edsr_jax import config_lib\nconfig_lib.load_config_file('broken.py')",
    setup=lambda ctx: text_file(ctx.tmp / "broken.py", "def get_config(:\n"),
    expect=(r"broken\.py",),
  ),
  Case(
    "lib-read-rgb-16-bit",
    None,
    snippet="from edsr_jax import image_io\nimage_io.read_rgb('deep.png')",
    setup=lambda ctx: png16(ctx.tmp / "deep.png"),
    expect=(r"deep\.png", r"16"),
  ),
  Case(
    "lib-list-images-dangling-symlink",
    None,
    snippet="from edsr_jax import image_io\nimage_io.list_images('in')",
    setup=lambda ctx: (
      png(ctx.tmp / "in" / "a.png"),
      os.symlink("gone.png", ctx.tmp / "in" / "link.png"),
    ),
    expect=(r"link\.png",),
  ),
  Case(
    "lib-evaluate-pair-sr-half-size",
    None,
    snippet=(
      "import numpy as np\nfrom edsr_jax import metrics\n"
      "sr, hr = np.zeros((20, 24, 3), np.uint8), np.zeros((40, 48, 3), np.uint8)\n"
      "metrics.evaluate_pair(sr, hr, scale=2)"
    ),
    expect=(r"(?i)size|shape", r"40"),
  ),
  Case(
    "lib-convert-nan-weights",
    None,
    snippet=(
      "from edsr_jax import import_torch\n"
      "import_torch.convert('nan.pt', '{tmp}/out', res_scale=1.0)"
    ),
    setup=_torch_file("nan.pt"),
    expect=(r"nan\.pt", r"body\.0\.body\.0\.weight"),
    absent=("out",),
    needs=("torch",),
  ),
  Case(
    "lib-train-busy-workdir",
    None,
    snippet=(
      "from edsr_jax import config_lib, train\n"
      "c = config_lib.load_config_file('{demo}', 'runlocal')\n"
      "c.num_train_steps = 2\n"
      "train.train_and_evaluate(c, '{tmp}/run')"
    ),
    setup=lambda ctx: start_lock_holder(ctx, ctx.tmp / "run"),
    expect=(r"run\b", r"\b{host}\b", r"\b{pid}\b"),
    absent=("run/config.json", "run/checkpoints"),
  ),
]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """One real 2-step training run, shared by every case that needs a checkpoint; no
  case may change it."""
  workdir = tmp_path_factory.mktemp("tiny") / "ckpt"
  done = subprocess.run(
    train_cmd(workdir, "--config.num_train_steps=2"),
    cwd=workdir.parent,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert (workdir / "checkpoints" / "2" / "state").is_dir()
  before = snapshot(workdir)
  yield workdir
  assert snapshot(workdir) == before, "a case changed the shared checkpoint"


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
  """Weights files: a tiny official-layout EDSR x2 (2 blocks, 16 features) as torch.save
  writes it, with NaN / inf / a wrong shape, truncated; and a pickle that runs code."""
  torch = pytest.importorskip("torch")
  import torch_reference as ref

  folder = tmp_path_factory.mktemp("torch")
  model = ref.randomize_(ref.EDSR(2, 2, 16), 0).eval()
  good = model.state_dict()
  torch.save(good, folder / "good.pt")
  bad = {k: v.clone() for k, v in good.items()}
  bad["body.0.body.0.weight"][0, 0, 0, 0] = float("nan")
  torch.save(bad, folder / "nan.pt")
  bad = {k: v.clone() for k, v in good.items()}
  bad["tail.0.0.bias"][1] = float("inf")
  torch.save(bad, folder / "inf.pt")
  bad = {k: v.clone() for k, v in good.items()}
  bad["body.1.body.0.weight"] = torch.zeros(16, 16, 5, 5)
  torch.save(bad, folder / "shape.pt")
  data = (folder / "good.pt").read_bytes()
  (folder / "cut.pt").write_bytes(data[: len(data) // 2])
  return folder


def snapshot(path) -> dict:
  """{relative path: (kind, size, mtime_ns, sha256)} of `path` and everything under it."""
  path = pathlib.Path(path)
  if not os.path.lexists(path):
    return {}
  items = [path] + (sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
  out = {}
  for p in items:
    st = p.lstat()
    if p.is_symlink():
      out[str(p.relative_to(path))] = ("link", os.readlink(p))
    elif p.is_dir():
      out[str(p.relative_to(path))] = ("dir",)
    else:
      out[str(p.relative_to(path))] = (
        "file",
        st.st_size,
        st.st_mtime_ns,
        hashlib.sha256(p.read_bytes()).hexdigest(),
      )
  return out


def _error_lines(lines):
  """Lines that report an error the way a CLI does: `error: ...`, or `<tool>: error: ...`."""
  return [line for line in lines if re.match(r"^(\S+: )?error: ", line)]


def judge(case: Case, ctx: Ctx, proc: subprocess.CompletedProcess) -> list[str]:
  """Everything wrong with a finished case (empty when it behaves)."""
  problems = []
  stderr_lines = [line for line in proc.stderr.splitlines() if line.strip()]
  if proc.returncode is None:
    problems.append(f"hangs: no exit within {CASE_TIMEOUT} s (killed)")
  elif proc.returncode != case.status:
    problems.append(f"exit status {proc.returncode}, expected {case.status}")
  if "Traceback" in proc.stdout + proc.stderr:
    count = (proc.stdout + proc.stderr).count("Traceback")
    problems.append(f"{count} traceback(s)")
  patterns = [ctx.fill_regex(p) for p in case.expect]
  errors = _error_lines(stderr_lines)
  if case.status == 1:
    ours = [line for line in errors if line.startswith("error: ")]
    if len(ours) != 1:
      problems.append(f"{len(ours)} lines start with 'error: ' ({len(errors)} error lines)")
    elif stderr_lines[-1] != ours[0]:
      problems.append("the error line is not the last line of stderr")
    line = ours[-1] if ours else (errors[-1] if errors else "")
    for pattern in patterns:
      if not re.search(pattern, line):
        problems.append(f"error line does not match {pattern!r}")
  else:
    if errors:
      problems.append(f"error line(s) in a run that should not fail: {errors[-1]!r}")
    if case.status in (EX_TEMPFAIL, SECOND_CTRL_C):
      text = stderr_lines[-1] if stderr_lines else ""
      where = "the last line of stderr"
    else:
      text, where = proc.stdout + "\n" + proc.stderr, "the output"
    for pattern in patterns:
      if not re.search(pattern, text):
        problems.append(f"{where} does not match {pattern!r}")
  return problems


def _report(case, proc, problems):
  path = os.environ.get("EDSR_BAD_INPUTS_REPORT")
  if not path:
    return
  lines = [line for line in (proc.stderr if proc else "").splitlines() if line.strip()]
  with open(path, "a") as f:
    record = {
      "id": case.id,
      "passed": not problems,
      "problems": problems,
      "status": proc.returncode if proc else None,
      "last_line": lines[-1][:400] if lines else "",
      "tracebacks": (proc.stdout + proc.stderr).count("Traceback") if proc else 0,
    }
    f.write(json.dumps(record) + "\n")


def test_table_is_large_enough():
  assert len(CASES) >= 45
  assert len({c.id for c in CASES}) == len(CASES)
  clis = {c.cli for c in CASES}
  assert {"main", "demo", "evaluate", "upscale", "score", "import_torch", None} <= clis


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, request):
  if "mount" in case.needs:
    request.getfixturevalue("can_mount")
  ckpt = (
    request.getfixturevalue("tiny_checkpoint")
    if "ckpt" in case.needs or any("{ckpt}" in a for a in case.args)
    else None
  )
  ctx = Ctx(tmp_path, ckpt)
  if "torch" in case.needs:
    ctx.vars["torch_files"] = request.getfixturevalue("torch_files")
  proc, problems = None, []
  try:
    if case.setup:
      case.setup(ctx)
    watched = {p: snapshot(ctx.tmp / ctx.fill(p)) for p in case.unchanged}
    for p, snap in watched.items():
      assert snap, f"unchanged path {p} does not exist after setup"
    if case.cli is None:
      cmd = [sys.executable, "-c", LIBRARY_RUNNER, ctx.fill(case.snippet)]
    else:
      cmd = [sys.executable, "-m", f"edsr_jax.{case.cli}", *map(ctx.fill, case.args)]
    if case.drive:
      proc = case.drive(ctx, cmd)
    else:
      try:
        proc = subprocess.run(
          cmd,
          cwd=tmp_path,
          env={**_env(), **case.env},
          capture_output=True,
          text=True,
          timeout=CASE_TIMEOUT,
        )
      except subprocess.TimeoutExpired as e:  # killed: report what it printed until then
        out, err = (
          x.decode(errors="replace") if isinstance(x, bytes) else x or ""
          for x in (e.stdout, e.stderr)
        )
        proc = subprocess.CompletedProcess(cmd, None, out, err)
    problems = judge(case, ctx, proc)
    for p, snap in watched.items():
      if snapshot(ctx.tmp / ctx.fill(p)) != snap:
        problems.append(f"{p} changed")
    for p in case.absent:
      if os.path.lexists(ctx.tmp / ctx.fill(p)):
        problems.append(f"{p} was created")
    if case.check:  # also after a failure: what it finds is part of the report
      try:
        case.check(ctx, proc)
      except Exception as e:  # an assertion, or a check that could not even run
        problems.append(f"check {case.check.__name__}: {' '.join(str(e).split())[:500]}")
  finally:
    ctx.run_cleanups()
    _report(case, proc, problems)
  tail = "\n".join(proc.stderr.strip().splitlines()[-6:]) if proc else ""
  assert not problems, f"{case.id}: {'; '.join(problems)}\n--- stderr (last lines):\n{tail}"
