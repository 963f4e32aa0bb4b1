"""The one runner of every command-line tool, and the lines tools write to stderr.

  if __name__ == "__main__":
    cli.run(main)

`run` is absl's `app.run` with two additions: libraries' routine INFO log lines are
dropped (orbax logs every step of every save), and a `UserError` ends the run with one
line `<tool>: error: <message>` on stderr and exit status 1. Any other exception is a
bug and keeps its traceback.
"""

import logging
import pathlib
import sys
from collections.abc import Callable

from absl import app
from absl import logging as absl_logging

from edsr_jax import errors

# Orbax logs every step of every save at INFO; TensorFlow and JAX announce backends.
_NOISY = ("/orbax/", "/jax/_src/xla_bridge", "/clu/asynclib", "signaling_client")


class _DropLibraryInfo(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(part in record.pathname for part in _NOISY)


def quiet_library_logs() -> None:
  absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())


def tool_name() -> str:
  """`upscale` for `python -m edsr_jax.upscale`: how error lines name the tool."""
  return pathlib.Path(sys.argv[0]).stem or "edsr_jax"


def log(message: str) -> None:
  """A progress line on stderr, written at once."""
  print(message, file=sys.stderr, flush=True)


def log_error(message: str) -> None:
  """`<tool>: error: <message>` on one line of stderr."""
  log(f"{tool_name()}: error: {' '.join(str(message).split())}")


def run(main: Callable[[list[str]], int | None]) -> None:
  """Parses the absl flags and runs `main(argv)`; its return value is the exit status."""

  def main_reporting_user_errors(argv: list[str]) -> int | None:
    quiet_library_logs()
    try:
      return main(argv)
    except errors.UserError as e:
      log_error(errors.one_line(e))
      return 1

  app.run(main_reporting_user_errors)
