"""What the benchmarks share: the machine they ran on (`cpu_model`), and measurements in
processes of their own, so that memory peaks are per row and JAX's GPU memory
preallocation cannot starve PyTorch. The parent runs `SCRIPT --child SPEC` (`run`); the
child answers with one `RESULT <json>` line on stdout (`answer`)."""

import json
import pathlib
import platform
import subprocess
import sys

PREFIX = "RESULT "


def run(script, spec: dict, env: dict, cwd) -> dict:
  """The child's result for `spec`, or {"error": "exit N: <its last stderr lines>"}."""
  proc = subprocess.run(
    [sys.executable, str(script), "--child", json.dumps(spec)],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
  )
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)]
  if proc.returncode != 0 or not lines:
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return {"error": f"exit {proc.returncode}: {tail[-400:]}"}
  return json.loads(lines[-1][len(PREFIX) :])


def answer(result: dict) -> None:
  print(PREFIX + json.dumps(result), flush=True)


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
