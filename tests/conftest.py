"""Shared test fixtures.

Real benchmark data lives outside the repository (`../shared/data` in CI). Tests that
need it read the path from `EDSR_SHARED_DATA`; they skip when it is unset on a
developer's machine, but fail in CI (CI=true) so a missing path never passes silently.
"""

import os
import pathlib

import pytest


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = os.environ.get("EDSR_SHARED_DATA", "")
  if path and pathlib.Path(path, "benchmark").is_dir():
    return pathlib.Path(path)
  message = f"EDSR_SHARED_DATA={path!r} does not point at the shared data folder"
  if os.environ.get("CI"):
    pytest.fail(message)
  pytest.skip(message)
