"""Keeps the training log readable: libraries' routine INFO lines are dropped."""

import logging

from absl import logging as absl_logging

# Orbax logs every step of every save at INFO; TensorFlow and JAX announce backends.
_NOISY = ("/orbax/", "/jax/_src/xla_bridge", "/clu/asynclib", "signaling_client")


class _DropLibraryInfo(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(part in record.pathname for part in _NOISY)


def quiet_library_logs() -> None:
  absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
