"""The errors a user can fix: one family, so that every tool reports them the same way.

A `UserError` says what was wrong with what the user gave (a config value, an image, a
checkpoint, a weights file, a flag) and how to fix it, in one message. Command-line tools
print it as one `error: <message>` line (`edsr_jax.cli.run`); any other exception is a bug
and keeps its traceback. The subclasses also derive from the built-in error they always
were (ValueError, FloatingPointError), so existing `except` clauses still hold.

`Preempted` is not an error: training stopped by SIGTERM or Ctrl-C after saving a
checkpoint, to be resumed (command-line tools exit with status 75 then).
"""


class UserError(Exception):
  """A problem with what the user gave; raised as is for flags and paths of a command."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key."""


class ImageError(UserError, ValueError):
  """An image file that cannot be used; the message names the file and the problem."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be read or written; the message names its path."""


class WeightsError(UserError, ValueError):
  """A weights file that cannot be read or does not hold the network asked for.

  When an argument of the request contradicts the file, `argument` is its name and
  `value` what was given (None when the message names the argument alone), and the
  message is `<argument>[=<value>]<detail>`, so that a command-line tool can restate
  the argument as its flag.
  """

  def __init__(self, message: str, argument: str | None = None, value=None, detail: str = ""):
    super().__init__(message)
    self.argument, self.value, self.detail = argument, value, detail


class DivergedError(UserError, FloatingPointError):
  """Training stopped because its loss or gradients stayed non-finite."""


class Preempted(Exception):
  """Training stopped by a signal (SIGTERM, Ctrl-C) after saving a checkpoint.

  `step` is the step saved, `checkpoint` its directory and `signal_name` the signal
  ('SIGTERM', 'SIGINT'). Running the same training again resumes from that checkpoint.
  `step` and `checkpoint` None: stopped during start-up (loading data, restoring,
  compiling), before a step ran, so there was nothing new to save.
  """

  def __init__(self, signal_name: str, step: int | None, checkpoint):
    if checkpoint is None:
      message = (
        f"stopped by {signal_name} during start-up (loading data, restoring or compiling): "
        "nothing new to save; run the same command to resume"
      )
    else:
      message = (
        f"stopped by {signal_name} at step {step}: saved {checkpoint}; run the same command "
        "to resume"
      )
    super().__init__(message)
    self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class Terminated(BaseException):
  """SIGTERM reached a command-line tool (`edsr_jax.cli.run` raises it in the main thread).

  A BaseException, as KeyboardInterrupt is, so that `except Exception` does not swallow
  it while `finally` and cleanup clauses still run: temporary files are removed on the
  way out. The tool then exits with status 143 (128 + SIGTERM), or 75 for training.
  """


def out_of_memory(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is an accelerator or host allocation failure:
  XLA's RESOURCE_EXHAUSTED, which JAX raises as a JaxRuntimeError, or a MemoryError."""
  while error is not None:
    if isinstance(error, MemoryError):
      return True
    # Checked on the runtime's own error: a wrapper (a failed save) may quote its text.
    if type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and any(
      word in str(error) for word in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")
    ):
      return True
    error = error.__cause__ or error.__context__
  return False


def one_line(error: BaseException, *, innermost: bool = False) -> str:
  """The message of `error` on one line (its type's name if it has none).

  With `innermost`, that of its innermost `__cause__`, cut to 300 characters: for
  describing a library's exception (orbax nests long specs) inside a UserError.
  """
  if innermost:
    while error.__cause__ is not None:
      error = error.__cause__
  text = " ".join(str(error).split()) or type(error).__name__
  if innermost and len(text) > 300:
    text = text[:297] + "..."
  return text
