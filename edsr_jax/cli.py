"""The one runner of every command-line tool, and the lines tools write to stderr.

  if __name__ == "__main__":
    cli.run(main)

`run` is absl's `app.run` with these additions:
- libraries' routine INFO log lines are dropped (orbax logs every step of every save);
- a problem with what the user gave ends the run with one line `error: <message>`, the
  last line on stderr, and exit status 1: a `UserError` raised by `main`, a flag that
  does not parse (a bad value, an unknown or missing flag, absl's `UsageError`), or a bad
  config file or `--config.<key>` (checked by `check_args`, before absl parses the flags);
- `errors.Preempted` (training stopped by SIGTERM or Ctrl-C after saving) prints its
  message as the last line and exits with status 75 (EX_TEMPFAIL: run the same command
  again to resume);
- Ctrl-C that reaches Python as KeyboardInterrupt (a second Ctrl-C during training, or
  one before training or in another tool) stops at once with one line and status 130;
- SIGTERM (a scheduler, `kill`) raises `errors.Terminated` in the main thread, so that
  cleanup clauses run (no temporary file is left behind), then the tool stops with one
  line and status 143; training turns it into `Preempted` (75) itself;
- running out of memory (XLA's RESOURCE_EXHAUSTED) that `main` did not explain itself is
  one `error:` line too, naming what to lower.
Any other exception is a bug and keeps its traceback.
"""

import atexit
import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from edsr_jax import errors

EX_TEMPFAIL = 75  # sysexits.h: a temporary failure, the user is invited to retry
EX_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C

# Orbax logs every step of every save at INFO; TensorFlow and JAX announce backends.
_NOISY = ("/orbax/", "/jax/_src/xla_bridge", "/clu/asynclib", "signaling_client")


class _QuietLibraries(logging.Filter):
  """Drops libraries' INFO lines, and keeps their errors to one line each.

  When a checkpoint write or read fails, orbax logs the failure of each of its threads
  with a traceback, and asyncio reports each abandoned TensorStore task ("Task exception
  was never retrieved", also while the process exits, after the error line). The tool
  reports that failure itself in its one `error:` line.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in _NOISY) or record.name == "asyncio"
    if not noisy:
      return True
    if record.levelno < logging.WARNING:
      return False
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def quiet_library_logs() -> None:
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  # A failed orbax write abandons coroutines it had created; Python warns about each
  # when it is garbage-collected, possibly while exiting, after the error line.
  warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)


def log(message: str) -> None:
  """A progress line on stderr, written at once."""
  print(message, file=sys.stderr, flush=True)


def log_error(message: str) -> None:
  """`error: <message>` on one line of stderr."""
  log(f"error: {' '.join(str(message).split())}")


def _stop_interrupted(*_, saved: bool = False) -> None:
  """Ctrl-C: one line, exit 130 now (no interpreter teardown: nothing waits on threads)."""
  if saved:
    log(
      "interrupted (Ctrl-C) while exiting; the checkpoint above is saved: run the same "
      "command to resume"
    )
  else:
    log(
      "interrupted (Ctrl-C): stopped at once without saving; a training run resumes from its "
      "last finished checkpoint when the same command is run again"
    )
  sys.stdout.flush()
  os._exit(EX_INTERRUPTED)


EX_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process stopped by `kill`


def _raise_terminated(signum, frame) -> None:
  del frame
  raise errors.Terminated(signal.Signals(signum).name)


def _exit_after_error() -> None:
  """Exit status 1 with the error line as the last line of stderr, every time.

  Library threads may still be at work when an error surfaces (orbax reads in flight
  when a checkpoint turns out to be corrupt) and would log their own failures after it;
  stderr is closed to them, then the process exits as `_exit_keeping_sigint` does."""
  sys.stderr.flush()
  if threading.current_thread() is not threading.main_thread():
    sys.exit(1)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stderr.fileno())
  _exit_keeping_sigint(1)


def _exit_keeping_sigint(status: int) -> None:
  """Exits with `status` after the atexit handlers (JAX's multi-process shutdown, log
  flushing), but without the interpreter's teardown: Python gives SIGINT back to the
  system's default there, so a Ctrl-C in those seconds would kill the process instead of
  running our handler."""
  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


# The flags this module defines for a tool (DEFINE_path) are that tool's, as if it had
# defined them itself: absl attributes them to the first module up the stack not disclaimed.
flags.disclaim_key_flags()


class _PathParser(flags.ArgumentParser):
  """A path flag's value: `~` expanded (a shell leaves `--workdir=~/x` as it is), and never
  empty (an unset shell variable would otherwise mean the current folder)."""

  def parse(self, argument: str) -> str:
    if not argument.strip():
      raise ValueError("empty (an unset shell variable?): give a path")
    return os.path.expanduser(argument)

  def flag_type(self) -> str:
    return "path"


def DEFINE_path(name: str, default: str | None, help_string: str, **kwargs) -> None:  # noqa: N802
  """A string flag that names a file or folder (see _PathParser)."""
  flags.DEFINE(
    _PathParser(), name, default, help_string, serializer=flags.ArgumentSerializer(), **kwargs
  )


# What decides which devices JAX starts, as a user may have set it.
_JAX_SETTINGS = (
  "JAX_PLATFORMS",
  "JAX_NUM_CPU_DEVICES",
  "CUDA_VISIBLE_DEVICES",
  "TPU_VISIBLE_CHIPS",
)


def start_jax() -> None:
  """Starts JAX's devices now, so that a backend that cannot start (JAX_PLATFORMS naming
  one not installed, JAX_NUM_CPU_DEVICES=0) is reported as that, in one line, and not
  later as whatever first touched a device (reading a checkpoint, say)."""
  jax = sys.modules.get("jax") or __import__("jax")
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:  # JAX_PLATFORMS=cuda without CUDA: a bare assert
    settings = ", ".join(f"{k}={os.environ[k]!r}" for k in _JAX_SETTINGS if k in os.environ)
    raise errors.UserError(
      f"JAX cannot start its devices{f' ({settings})' if settings else ''}: "
      f"{errors.one_line(e) if str(e) else 'that backend is not installed'}; unset "
      "JAX_PLATFORMS to use the devices this machine has (or install the backend it names, "
      "e.g. jax[cuda12]); JAX_NUM_CPU_DEVICES must be at least 1"
    ) from None


def _parse_flags(check_args: Callable[[list[str]], list[str]] | None):
  """absl's flag parsing with every failure as one `error:` line and exit status 1."""

  def parse(argv: list[str]) -> list[str]:
    try:
      if check_args is not None:
        argv = check_args(argv)
      return flags.FLAGS(argv)
    except (errors.UserError, flags.Error) as e:
      log_error(errors.one_line(e))
    except KeyboardInterrupt:
      _stop_interrupted()
    sys.exit(1)

  return parse


def run(
  main: Callable[[list[str]], int | None],
  check_args: Callable[[list[str]], list[str]] | None = None,
  start_jax_first: bool = True,
) -> None:
  """Parses the absl flags and runs `main(argv)`; its return value is the exit status.

  `check_args(argv)`, if given, runs before the flags are parsed, raises a UserError for
  a problem it finds and returns the arguments to parse (the config file flags:
  `config_lib.check_config_args`). Unless `start_jax_first` is False (training connects
  its processes before JAX may start, then calls `start_jax` itself), JAX's devices are
  started before `main` when the tool uses JAX.
  """

  def main_reporting_user_errors(argv: list[str]) -> int | None:
    quiet_library_logs()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, _raise_terminated)
    try:
      try:
        if start_jax_first and "jax" in sys.modules:
          start_jax()
        status = main(argv)
        # Done: a SIGTERM while the interpreter exits (atexit handlers) just ends it, 143.
        if threading.current_thread() is threading.main_thread():
          signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return status
      except errors.Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log("stopped by SIGTERM; nothing half-written was left behind")
        _exit_keeping_sigint(EX_TERMINATED)
      except errors.Preempted as e:
        log(str(e))
        if threading.current_thread() is not threading.main_thread():
          return EX_TEMPFAIL
        # A second Ctrl-C from now until the process is gone stops it at once (130).
        signal.signal(signal.SIGINT, functools.partial(_stop_interrupted, saved=True))
        _exit_keeping_sigint(EX_TEMPFAIL)
      except (errors.UserError, app.UsageError) as e:
        log_error(errors.one_line(e))
        _exit_after_error()
      except Exception as e:
        if not errors.out_of_memory(e):
          raise
        log_error(
          f"out of memory: {errors.one_line(e)[:200]}; use less memory (a smaller "
          "batch_size or patch_size, smaller images or tiles) or a device with more"
        )
        _exit_after_error()
    except KeyboardInterrupt:
      _stop_interrupted()

  tool = sys.modules[main.__module__]
  if tool.__name__ != "__main__":
    # A console script (`edsr-upscale`): absl's --help shows the docstring and the flags of
    # the __main__ module, here the script pip wrote; point both at the tool's module.
    sys.modules["__main__"].__doc__ = tool.__doc__
    for flag in flags.FLAGS.get_flags_for_module(tool.__name__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main_reporting_user_errors, flags_parser=_parse_flags(check_args))
