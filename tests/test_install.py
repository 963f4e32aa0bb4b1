"""The venv `make` builds holds exactly the lock, and the project imports from anywhere.

`requirements.txt` / `requirements-test.txt` are the human-edited lists; `make lock`
resolves them into `requirements.lock` / `requirements-test.lock`, which pin every
package, transitive ones included; `make` installs the lock with --no-deps.
"""

import importlib
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import numpy as np
from PIL import Image
from skimage import data

REPO = pathlib.Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$")
# Installed with the venv itself, not from the lock (pip stays whatever the venv brings).
NOT_LOCKED = {"pip", "edsr-jax"}


def normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: pathlib.Path) -> dict[str, str]:
  """{normalized name: version} of the `name==version` lines; anything else but comments,
  blank lines and `-r file` is an error (a lock pins everything exactly)."""
  pins = {}
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-r "):
      continue
    match = PIN.match(line)
    assert match, f"{path.name}: {line!r} is not pinned with =="
    pins[normalize(match[1])] = match[2]
  return pins


def installed() -> dict[str, str]:
  return {
    normalize(d.metadata["Name"]): d.version
    for d in importlib.metadata.distributions()
    if normalize(d.metadata["Name"]) not in NOT_LOCKED
  }


# Locked, but installed by `make` to folders of their own (see the Makefile): an
# importable libtpu or CUDA plugin makes JAX look for a TPU / GPU in every program.
COMPILERS = {
  "tpu-compiler": {"libtpu"},
  "gpu-compiler": {"jax-cuda12-plugin", "jax-cuda12-pjrt"},
}


def test_venv_holds_exactly_the_test_lock():
  lock = read_pins(REPO / "requirements-test.lock")
  for folder, names in COMPILERS.items():
    path = str(pathlib.Path(sys.prefix) / folder)
    there = {
      normalize(d.metadata["Name"]): d.version
      for d in importlib.metadata.distributions(path=[path])
    }
    assert there == {n: lock.pop(n) for n in names}, folder
  assert (pathlib.Path(sys.prefix) / "tpu-compiler" / "libtpu" / "libtpu.so").is_file()
  have = installed()
  unpinned = sorted(f"{n}=={v}" for n, v in have.items() if n not in lock)
  missing = sorted(f"{n}=={v}" for n, v in lock.items() if n not in have)
  wrong = sorted(
    f"{n}: {have[n]} installed, {v} locked" for n, v in lock.items() if n in have and have[n] != v
  )
  assert not (unpinned or missing or wrong), (
    f"the venv differs from requirements-test.lock (run `make clean venv`, or `make lock` "
    f"after editing requirements*.txt): installed but not locked {unpinned}; locked but "
    f"not installed {missing}; other versions {wrong}"
  )


def test_locks_agree_with_the_requirements():
  runtime, test = read_pins(REPO / "requirements.lock"), read_pins(REPO / "requirements-test.lock")
  # The test lock is the runtime lock plus test tools, never another version of a package.
  assert {n: test.get(n) for n in runtime} == runtime
  for source, lock in (("requirements.txt", runtime), ("requirements-test.txt", test)):
    for name, version in read_pins(REPO / source).items():
      assert lock.get(name) == version, f"{source} pins {name}=={version}; run `make lock`"
  # The lock carries transitive packages, not only the listed ones.
  for transitive in ("tensorstore", "protobuf", "grpcio", "ml-dtypes"):
    assert transitive in runtime


def test_import_from_outside_the_checkout(tmp_path):
  """`pip install -e .` (done by make): imports and the CLIs work from any folder."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  script = "import edsr_jax, edsr_jax.models, edsr_jax.inference; print(edsr_jax.__file__)"
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert pathlib.Path(result.stdout.strip()).parent.name == "edsr_jax"
  help_text = subprocess.run(
    [sys.executable, "-m", "edsr_jax.score", "--help"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "--hr_dir" in help_text.stdout + help_text.stderr


def _console_scripts() -> dict[str, str]:
  return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_line_tool_has_a_console_script():
  tools = {
    p.stem
    for p in (REPO / "edsr_jax").glob("*.py")
    if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M)
  }
  scripts = _console_scripts()
  assert {v for v in scripts.values()} == {f"edsr_jax.{t}:run" for t in tools}
  for name in scripts:
    assert name.startswith("edsr-") and "_" not in name
    assert (pathlib.Path(sys.executable).parent / name).is_file(), (
      f"{name} is not installed next to {sys.executable}: run `make` (pip install -e .)"
    )


def test_console_scripts_work_from_a_folder_outside_the_checkout(tmp_path):
  """`edsr-upscale` with relative paths from another folder writes the same image as
  `python -m edsr_jax.upscale`; every script answers --help."""
  bin_dir = pathlib.Path(sys.executable).parent
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  photo = data.astronaut()[::8, ::8]  # 64 x 64, a real photo
  Image.fromarray(photo).save(tmp_path / "photo.png")
  args = [f"--checkpoint={REPO}/pretrained/edsr_291_x2", "--output_dir=out", "photo.png"]
  helps = {
    name: subprocess.Popen(
      [str(bin_dir / name), "--help"],
      cwd=tmp_path,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for name in _console_scripts()
  }
  script = subprocess.run(
    [str(bin_dir / "edsr-upscale"), *args], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert script.returncode == 0, script.stderr[-2000:]
  (tmp_path / "out").rename(tmp_path / "by_script")
  module = subprocess.run(
    [sys.executable, "-m", "edsr_jax.upscale", *args], cwd=tmp_path, env=env, capture_output=True
  )
  assert module.returncode == 0
  ours = np.asarray(Image.open(tmp_path / "by_script" / "photo_x2_SR.png"))
  assert ours.shape == (128, 128, 3)
  assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "out" / "photo_x2_SR.png")))
  for name, proc in helps.items():
    out, _ = proc.communicate(timeout=120)
    # absl's --help prints the usage and exits 1, as `python -m edsr_jax.<tool> --help` does.
    assert proc.returncode == 1 and "Traceback" not in out, f"{name} --help: {out[-2000:]}"
    # The tool's own usage text and its flags, as `python -m` shows them.
    module = importlib.import_module(_console_scripts()[name].split(":")[0])
    assert out.startswith(module.__doc__.split("\n")[0]), f"{name} --help: {out[:300]}"
    assert f"{bin_dir / name}:\n  --" in out, f"{name} --help does not list its flags"
