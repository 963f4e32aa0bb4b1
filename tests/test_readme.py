"""The documented commands, run as written from the root of a fresh copy of the checkout.

The documents are README.md and every page under docs/ (`documents()`). Every command in
their `sh` and `python` blocks is read out of them and must be claimed by exactly one
entry of `COMMANDS` below, so a command added to or changed in a document without a test
fails here. Each test runs its command's text, as written in the document that holds it,
with the relative paths it has, in a real subprocess, from the root of a copy of this
checkout (tracked and untracked-not-ignored files; `.venv` linked to this one's), so the
runs never touch the developer's own `runs/`. Every relative link in the documents must
lead to a file, and a heading, that exist.

What a test may change, and nothing else:
- step counts, image counts and batch sizes, through flags or `make ... DEMO_ARGS=`,
  appended after the document's own text;
- placeholders for data a user brings (in any document): `/data/DIV2K` becomes a small
  DIV2K-layout folder made of Set5 images, `/data/benchmark` a folder of the real benchmark sets,
  `/data/T91` and `/data/BSD200` the real training sets,
  `photo.png` a real photo, `edsr_baseline_x2-1bc95232.pt` a state_dict of the official
  architecture written by `torch.save` (random weights);
- the launch scripts get `--dry-run`: they drive Cloud TPU and GPU hosts.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The pages the README links to; each stands on its own, and their commands are tested too.
DOCS = REPO / "docs"
# Where the launch/ walkthrough (Cloud TPU, GPU host, Slurm) is.
LAUNCH_DOC = DOCS / "launch.md"
TIMEOUT = 300


def documents() -> list[pathlib.Path]:
  """README.md, then every page under docs/."""
  return [README, *sorted(DOCS.glob("*.md"))]


# Placeholder in a document -> path relative to the copy's root, made by `readme_copy`.
PLACEHOLDERS = {
  "/data/DIV2K": "data/DIV2K",
  "/data/benchmark": "data/benchmark",
  "/data/T91": "data/T91",
  "/data/BSD200": "data/BSD200",
}


def document_commands(path: pathlib.Path) -> list[str]:
  """Each command of a document's sh blocks (continuations joined, comments dropped) and
  each python block whole."""
  text = path.read_text()
  commands = []
  for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", text, re.S | re.M):
    if lang == "python":
      commands.append(body.strip())
    elif lang == "sh":
      body = re.sub(r"\\\n\s*", "", body)
      for line in body.splitlines():
        line = re.sub(r"(^|\s)# .*$", "", line).strip()
        if line:
          commands.append(" ".join(line.split()))
  return commands


def doc_commands() -> list[str]:
  """The commands of every document, README.md's first."""
  return [c for path in documents() for c in document_commands(path)]


def holder(command: str) -> str:
  """The document that holds `command` (for messages)."""
  paths = [p for p in documents() if command in document_commands(p)]
  return ", ".join(str(p.relative_to(REPO)) for p in paths)


# Every documented command: the start of its text -> what runs it (a test below), or why
# nothing here can (said plainly, and the test that covers the same code path).
COMMANDS = {
  "make demo": "test_make_demo",
  "make upscale": "test_make_upscale",
  "make test": "not run from inside itself: `.ci/run` runs it on every submission",
  ".venv/bin/python -m edsr_jax.main --config=configs/edsr.py:x2,baseline --workdir=runs/x2": (
    "test_train_interrupt_and_resume"
  ),
  "--config.batch_size=64": "test_override_flags",
  "from edsr_jax import config_lib, train": "test_notebook_training_snippet",
  ".venv/bin/python -m edsr_jax.upscale --checkpoint=runs/": "test_upscale",
  ".venv/bin/python -m edsr_jax.upscale --checkpoint=exported/": "test_deploy_page",
  ".venv/bin/python -m edsr_jax.evaluate --checkpoint=runs/x2": "test_evaluate_then_score",
  # And, as written (all three sets), test_shipped_weights_reproduce_the_whole_table (slow).
  ".venv/bin/python -m edsr_jax.evaluate --checkpoint=pretrained/": (
    "test_shipped_weights_reproduce_the_readme_on_set5"
  ),
  ".venv/bin/python -m edsr_jax.main --config=configs/edsr_291.py": "test_291_recipe",
  ".venv/bin/python -m edsr_jax.export --checkpoint=runs/": "test_291_recipe",
  ".venv/bin/python -m edsr_jax.export --checkpoint=pretrained/": "test_deploy_page",
  "import numpy as np, onnxruntime": "test_deploy_page",
  "import numpy as np\nfrom PIL import Image\nfrom edsr_jax import deploy": "test_deploy_page",
  "import numpy as np\nfrom PIL import Image\nfrom ai_edge_litert": "test_deploy_page",
  "import numpy as np, tensorflow as tf": "test_deploy_page",
  ".venv/bin/python scripts/plot_validation_curve.py": "test_291_recipe",
  ".venv/bin/python scripts/crop_comparison.py": "test_crop_comparison_of_the_shipped_x4",
  ".venv/bin/python -m edsr_jax.score": "test_evaluate_then_score",
  ".venv/bin/python -m edsr_jax.import_torch": "test_import_torch",
  "from edsr_jax import inference": "test_inference_snippet",
  ".venv/bin/python -m edsr_jax.tfds_data": (
    "downloads the 5 GB DIV2K archives; test_tfds_data prepares the real builder from tiny "
    "archives instead"
  ),
  "gcloud storage cp": "Google Cloud's own CLI, not this project's",
  ".venv/bin/python -m edsr_jax.aot": "tests/test_aot.py compiles the same step for TPU",
  "TPU=": "test_launch_blocks_dry_run",
  "launch/": "test_launch_blocks_dry_run",
  "tmux new": "tmux, not this project's",
}


def claim(command: str) -> str:
  matches = [key for key in COMMANDS if command.startswith(key)]
  assert len(matches) == 1, (
    f"command {command!r} of {holder(command)} is claimed by {matches or 'nothing'}"
  )
  return matches[0]


def test_every_documented_command_is_claimed():
  commands = doc_commands()
  assert len(commands) >= 15, commands
  claimed = {claim(c) for c in commands}
  unused = set(COMMANDS) - claimed
  assert not unused, f"COMMANDS lists what no document has any longer: {unused}"
  tests = {v for v in COMMANDS.values() if v.startswith("test_")}
  missing = [t for t in tests if t not in globals()]
  assert not missing, missing


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(path: pathlib.Path) -> str:
  """A document without its code blocks (whose `# ...` lines are comments, not headings)."""
  return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def test_every_page_is_linked_and_every_link_leads_somewhere():
  """The README links every docs/ page; every relative link of every document (and of
  launch/README.md) names a file that exists and, after `#`, one of its headings."""
  readme = README.read_text()
  for page in documents()[1:]:
    assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
  for path in [*documents(), REPO / "launch" / "README.md"]:
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path)):
      if re.match(r"[a-z]+:", target):
        continue
      file, _, anchor = target.partition("#")
      linked = (path.parent / file).resolve() if file else path
      assert linked.exists(), f"{path.relative_to(REPO)}: {target} does not exist"
      if anchor:
        headings = re.findall(r"^#+ (.*)$", _prose(linked), re.M)
        assert anchor in {_anchor(h) for h in headings}, f"{path.relative_to(REPO)}: {target}"


def doc_command(start: str) -> str:
  """The one documented command starting with `start`, as written in the document that
  holds it, placeholders replaced."""
  (command,) = [c for c in doc_commands() if c.startswith(start)]
  for placeholder, path in PLACEHOLDERS.items():
    command = command.replace(placeholder, path)
  return command


def _copy_checkout(dest: pathlib.Path) -> None:
  files = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=REPO,
    capture_output=True,
    check=True,
  ).stdout.split(b"\0")
  for name in filter(None, files):
    src = REPO / os.fsdecode(name)
    if src.is_file():
      (dest / src.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / src.relative_to(REPO))


def _div2k_layout(root: pathlib.Path, benchmark: pathlib.Path) -> None:
  """DIV2K as unpacked (HR and MATLAB-made x2 LR), from Set5: 3 train, 2 validation."""
  names = ["baby", "bird", "butterfly", "head", "woman"]
  for i, name in enumerate(names):
    split, number = ("train", i + 1) if i < 3 else ("valid", 801 + i - 3)
    hr, lr = root / f"DIV2K_{split}_HR", root / f"DIV2K_{split}_LR_bicubic" / "X2"
    hr.mkdir(parents=True, exist_ok=True)
    lr.mkdir(parents=True, exist_ok=True)
    shutil.copy(benchmark / "Set5" / "HR" / f"{name}.png", hr / f"{number:04d}.png")
    shutil.copy(
      benchmark / "Set5" / "LR_bicubic" / "X2" / f"{name}x2.png", lr / f"{number:04d}x2.png"
    )


@pytest.fixture(scope="module")
def readme_copy(tmp_path_factory, shared_data):
  """A copy of the checkout with the documents' placeholders made real."""
  venv = REPO / ".venv"
  if not (venv / "bin" / "python").exists():
    pytest.skip("no .venv: run `make test`")
  root = tmp_path_factory.mktemp("checkout")
  _copy_checkout(root)
  os.symlink(venv, root / ".venv")
  benchmark = shared_data / "benchmark"
  _div2k_layout(root / "data" / "DIV2K", benchmark)
  (root / "data" / "benchmark").mkdir(parents=True)
  for name in ("Set5", "Set14", "B100"):
    os.symlink(benchmark / name, root / "data" / "benchmark" / name)
  for name in ("T91", "BSD200"):
    os.symlink(shared_data / "train" / name, root / "data" / name)
  # Urban100 is not among the shared sets: two Set14 images stand in under its name.
  urban = root / "data" / "benchmark" / "Urban100"
  for sub, suffix in (("HR", ""), ("LR_bicubic/X2", "x2")):
    (urban / sub).mkdir(parents=True)
    for name in ("barbara", "comic"):
      shutil.copy(benchmark / "Set14" / sub / f"{name}{suffix}.png", urban / sub)
  shutil.copy(benchmark / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png", root / "photo.png")
  return root


def run(root, command: str, *extra: str, timeout=TIMEOUT, check=True):
  """Runs a documented command line (shell syntax, as a user types it) with `extra` appended."""
  line = command + "".join(" " + shlex.quote(e) for e in extra)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS")}
  result = subprocess.run(
    ["bash", "-c", line], cwd=root, capture_output=True, text=True, timeout=timeout, env=env
  )
  if check:
    assert result.returncode == 0, (
      f"{line}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
  assert "Traceback" not in result.stderr, result.stderr
  return result


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())


@pytest.fixture(scope="module")
def demo_run(readme_copy):
  """`make demo` as the README has it, with fewer steps."""
  make = doc_command("make demo")
  args = (
    "--config.num_train_steps=20 --config.checkpoint_every_steps=10 --config.eval_every_steps=20"
  )
  return run(readme_copy, make, f"DEMO_ARGS={args}")


def test_make_demo(readme_copy, demo_run):
  workdir = readme_copy / "runs" / "demo"  # the Makefile's relative default
  assert checkpoint_steps(workdir) == [10, 20]
  assert (workdir / "comparison.png").stat().st_size > 0
  assert list(workdir.glob("events.out.tfevents.*"))
  results = json.loads((workdir / "demo_results.json").read_text())
  assert len(results["per_image"]) == 4 and results["psnr"] > 20
  assert "gain over bicubic" in demo_run.stdout


TRAIN = ".venv/bin/python -m edsr_jax.main --config=configs/edsr.py:x2,baseline --workdir=runs/x2"
SMALL_TRAIN = (
  "--config.num_train_steps=30",
  "--config.batch_size=2",
  "--config.checkpoint_every_steps=3",
  "--config.log_every_steps=3",
)


@pytest.fixture(scope="module")
def x2_run(readme_copy):
  """The documented training command (docs/training.md): started, interrupted after its
  first checkpoint, and started again with the same command, which resumes and finishes."""
  command = doc_command(TRAIN)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  line = command + " " + " ".join(SMALL_TRAIN)
  workdir = readme_copy / "runs" / "x2"
  first = subprocess.Popen(
    ["bash", "-c", "exec " + line],
    cwd=readme_copy,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + TIMEOUT
  while not checkpoint_steps(workdir) and first.poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
  first.send_signal(signal.SIGTERM)  # what a scheduler or `kill` sends
  _, first_err = first.communicate(timeout=TIMEOUT)
  assert "Traceback" not in first_err, first_err
  assert first.returncode == 75, first_err  # saved, not finished: docs/troubleshooting.md
  interrupted_at = max(checkpoint_steps(workdir))
  assert interrupted_at < 30, "the first run was not interrupted"
  second = run(readme_copy, command, *SMALL_TRAIN)
  return interrupted_at, second


def test_train_interrupt_and_resume(readme_copy, x2_run):
  interrupted_at, second = x2_run
  log = second.stderr
  assert re.search(rf"resumed from \S*runs/x2/checkpoints at step {interrupted_at}\b", log), log
  assert max(checkpoint_steps(readme_copy / "runs" / "x2")) == 30
  assert (readme_copy / "runs" / "x2" / "config.json").is_file()


def test_override_flags(readme_copy):
  """The documented example overrides parse and pass validation on the command line."""
  (flags,) = [c for c in doc_commands() if c.startswith("--config.batch_size=64")]
  script = (
    "import sys\n"
    "from absl import flags\n"
    "from ml_collections import config_flags\n"
    "from edsr_jax import config_lib\n"
    "c = config_flags.DEFINE_config_file('config')\n"
    "flags.DEFINE_string('workdir', None, '')\n"
    "flags.FLAGS(sys.argv)\n"
    "config_lib.validate(c.value, 1)\n"
    "print(c.value.batch_size, c.value.model.num_blocks, c.value.model.dtype)\n"
  )
  # With the training command's config and data flags, which the overrides go after.
  train = doc_command(TRAIN).split(" ", 3)[-1]
  result = run(readme_copy, f".venv/bin/python -c {shlex.quote(script)} {train} {flags}")
  assert result.stdout.split() == ["64", "8", "bfloat16"]


def _python_snippet(start: str) -> str:
  (snippet,) = [c for c in doc_commands() if c.startswith(start)]
  return snippet


def test_notebook_training_snippet(readme_copy):
  snippet = _python_snippet("from edsr_jax import config_lib, train")
  assert "config.num_train_steps = 200" in snippet
  snippet = snippet.replace("config.num_train_steps = 200", "config.num_train_steps = 4")
  snippet += "\nprint('step', int(state.step))"
  result = run(readme_copy, f".venv/bin/python -c {shlex.quote(snippet)}")
  assert result.stdout.split()[-2:] == ["step", "4"]
  assert checkpoint_steps(readme_copy / "runs" / "notebook") == [4]


def test_inference_snippet(readme_copy, demo_run):
  snippet = _python_snippet("from edsr_jax import inference")
  script = (
    "from edsr_jax import image_io\n"
    "lr_uint8 = image_io.read_rgb('photo.png')\n"
    + snippet
    + "\nprint(lr_uint8.shape, sr.shape, sr.dtype)"
  )
  result = run(readme_copy, f".venv/bin/python -c {shlex.quote(script)}")
  assert result.stdout.strip().splitlines()[-1] == "(128, 128, 3) (256, 256, 3) uint8"


def test_upscale(readme_copy, x2_run):
  run(readme_copy, doc_command(".venv/bin/python -m edsr_jax.upscale --checkpoint=runs/"))
  from PIL import Image

  with Image.open(readme_copy / "out" / "photo_x2_SR.png") as image:
    assert image.size == (256, 256)


def test_evaluate_then_score(readme_copy, x2_run):
  result = run(
    readme_copy,
    doc_command(".venv/bin/python -m edsr_jax.evaluate --checkpoint=runs/x2"),
    "--max_images=1",
  )
  scores = json.loads((readme_copy / "runs/x2/scores.json").read_text())
  assert "Set5" in result.stdout and "Urban100" in result.stdout
  saved = sorted((readme_copy / "runs/x2/sr/Set5/x2").iterdir())
  assert [p.name for p in saved] == ["baby_x2_SR.png"]
  # Score re-reads the saved image from disk: the same PSNR as evaluate's own.
  score = run(
    readme_copy,
    doc_command(".venv/bin/python -m edsr_jax.score"),
    "--output_json=runs/x2/score.json",
    check=False,
  )
  # Score pairs every HR image with an SR file; only baby was saved (--max_images=1).
  assert score.returncode != 0 and "bird_x2_SR.png" in score.stderr
  only_baby = readme_copy / "hr_baby"
  only_baby.mkdir()
  shutil.copy(readme_copy / "data/benchmark/Set5/HR/baby.png", only_baby)
  command = doc_command(".venv/bin/python -m edsr_jax.score").replace(
    "data/benchmark/Set5/HR", "hr_baby"
  )
  run(readme_copy, command, "--output_json=runs/x2/score.json")
  scored = json.loads((readme_copy / "runs/x2/score.json").read_text())
  assert scored["psnr"] == pytest.approx(scores["Set5"]["x2"]["psnr"], abs=1e-9)


def test_import_torch(readme_copy):
  torch = pytest.importorskip("torch")
  import torch_reference as ref

  command = doc_command(".venv/bin/python -m edsr_jax.import_torch")
  pt = re.search(r"--input=(\S+)", command)[1]
  model = ref.randomize_(ref.EDSR(scale=2), seed=0)
  torch.save(model.state_dict(), readme_copy / pt)
  run(readme_copy, command)
  out = readme_copy / re.search(r"--output=(\S+)", command)[1]
  assert checkpoint_steps(out), list(out.rglob("*"))
  # The converted model computes the official network's function.
  lr = np.random.default_rng(0).uniform(0, 255, (1, 3, 12, 10)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(lr)).numpy().transpose(0, 2, 3, 1)
  script = (
    "import sys, numpy as np\n"
    "from edsr_jax import inference\n"
    f"u = inference.load({str(out.relative_to(readme_copy))!r})\n"
    "lr = np.load(sys.argv[1])\n"
    "sr = u.model.apply({'params': u.params}, lr, 2)\n"
    "np.save(sys.argv[2], np.asarray(sr))\n"
  )
  np.save(readme_copy / "lr.npy", lr.transpose(0, 2, 3, 1))
  run(readme_copy, f".venv/bin/python -c {shlex.quote(script)} lr.npy sr.npy")
  np.testing.assert_allclose(np.load(readme_copy / "sr.npy"), expected, atol=2e-3)


def test_launch_blocks_dry_run(readme_copy):
  """The launch/ blocks of docs/launch.md, in order in one shell (as a user pastes them, so
  $TPU carries over), each launch/ subcommand with --dry-run."""
  text = LAUNCH_DOC.read_text()
  blocks = [b for b in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M) if "launch/" in b]
  lines = []
  for line in re.sub(r"\\\n\s*", "", "".join(blocks)).splitlines():
    line = re.sub(r"(^|\s)# .*$", "", line).strip()
    if line and claim(" ".join(line.split())) in ("TPU=", "launch/"):
      lines.append(re.sub(r"^(launch/\w+\.sh) (\w+)", r"\1 \2 --dry-run", line))
  assert sum(line.startswith("launch/") for line in lines) >= 15, lines
  result = run(readme_copy, "set -e\n" + "\n".join(lines))
  assert "queued-resources create edsr-v4" in result.stdout, result.stdout
  assert "--workdir=gs://MY_BUCKET/runs/edsr_x2" in result.stdout


@pytest.mark.slow  # ~30 s; tests/test_deploy.py runs the same CLIs and runtimes in make test
def test_deploy_page(readme_copy):
  """docs/deploy.md as written: the shipped x2 model exported in the three formats, the
  ONNX model run by `upscale --runtime=onnxruntime`, and each runtime's snippet, whose
  outputs agree with the JAX network's within 1 grey level."""
  from edsr_jax import inference

  page = DOCS / "deploy.md"
  for command in document_commands(page):
    if command.startswith(".venv/bin/python -m edsr_jax.export"):
      result = run(readme_copy, command)
      output = re.search(r"--output=(\S+)", command)[1]
      assert output in result.stdout and (readme_copy / output).exists()
  run(readme_copy, doc_command(".venv/bin/python -m edsr_jax.upscale --checkpoint=exported/"))
  photo = np.asarray(Image.open(readme_copy / "photo.png").convert("RGB"))
  want = inference.load(REPO / "pretrained" / "edsr_291_x2").upscale(photo).astype(np.int16)
  with Image.open(readme_copy / "out" / "photo_x2_SR.png") as image:
    assert np.abs(np.asarray(image).astype(np.int16) - want).max() <= 1
  snippets = [c for c in document_commands(page) if not c.startswith(".venv/")]
  assert len(snippets) == 4
  # One interpreter runs the four snippets, each in a namespace of its own, and keeps
  # each one's `sr` (four interpreters would import TensorFlow and friends four times).
  (readme_copy / "snippets.json").write_text(json.dumps(snippets))
  runner = (
    "import json, numpy\n"
    "for k, code in enumerate(json.load(open('snippets.json'))):\n"
    "  scope = {}\n"
    "  exec(compile(code, f'snippet {k}', 'exec'), scope)\n"
    "  numpy.save(f'sr{k}.npy', scope['sr'])\n"
  )
  run(readme_copy, f".venv/bin/python -c {shlex.quote(runner)}")
  for k, snippet in enumerate(snippets):
    got = np.load(readme_copy / f"sr{k}.npy").astype(np.int16)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1, snippet[:40]


def test_make_upscale(readme_copy):
  run(readme_copy, doc_command("make upscale"))
  from PIL import Image

  with Image.open(readme_copy / "out" / "photo_x2_SR.png") as image:
    assert image.size == (256, 256)
  refused = run(readme_copy, "make upscale IMAGES=photo.png SCALE=5", check=False)
  assert refused.returncode != 0 and "the shipped models are x2, x3 and x4" in refused.stderr


def readme_results() -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
  """The README's Results table: {(set, scale): {"bicubic": (dB, SSIM), "ours": ...}}."""
  section = README.read_text().split("\n## Results", 1)[1].split("\n## ", 1)[0]
  rows = {}
  for line in section.splitlines():
    cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
    if len(cells) == 6 and re.fullmatch(r"x[234]", cells[1]):
      pairs = [tuple(float(v) for v in cells[i].split(" / ")) for i in (2, 5)]
      rows[cells[0], int(cells[1][1])] = dict(zip(("bicubic", "ours"), pairs, strict=True))
  assert len(rows) == 9, rows
  return rows


def _rescore(readme_copy, tmp_name, *extra):
  """Runs the README's evaluate commands on the shipped weights: {(set, scale): scores}."""
  commands = [
    c
    for c in doc_commands()
    if c.startswith(".venv/bin/python -m edsr_jax.evaluate --checkpoint=pretrained/")
  ]
  assert len(commands) == 3
  scores = {}
  for command in commands:
    command = command.replace("/data/benchmark", "data/benchmark")
    scale = int(re.search(r"pretrained/edsr_291_x(\d)", command)[1])
    out = f"{tmp_name}_x{scale}.json"
    run(readme_copy, command, *extra, f"--output_json={out}", timeout=900)
    for name, by_scale in json.loads((readme_copy / out).read_text()).items():
      scores[name, scale] = by_scale[f"x{scale}"]
  return scores


def _assert_reproduced(scores, table):
  for key, got in scores.items():
    ours, bicubic = table[key]["ours"], table[key]["bicubic"]
    assert got["psnr"] == pytest.approx(ours[0], abs=0.01), key
    assert got["ssim"] == pytest.approx(ours[1], abs=1e-4), key
    assert got["bicubic_psnr"] == pytest.approx(bicubic[0], abs=0.01), key
    assert got["bicubic_ssim"] == pytest.approx(bicubic[1], abs=1e-4), key


def test_shipped_weights_reproduce_the_readme_on_set5(readme_copy):
  """Each shipped model, loaded from pretrained/ by the README's command, scores what the
  README's table says on Set5 (all five images) to 0.01 dB."""
  scores = _rescore(readme_copy, "set5", "--datasets=Set5")
  assert sorted(scores) == [("Set5", 2), ("Set5", 3), ("Set5", 4)]
  _assert_reproduced(scores, readme_results())


@pytest.mark.slow
def test_shipped_weights_reproduce_the_whole_table(readme_copy):
  scores = _rescore(readme_copy, "all")
  assert len(scores) == 9
  _assert_reproduced(scores, readme_results())


def test_shipped_weights_are_small_fresh_workdirs():
  for scale in (2, 3, 4):
    folder = REPO / "pretrained" / f"edsr_291_x{scale}"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 10 * 2**20, (folder, size)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["0"]
    assert json.loads((folder / "export.json").read_text())["ema"] is True


TRAIN_291 = ".venv/bin/python -m edsr_jax.main --config=configs/edsr_291.py"
SMALL_291 = (
  "--config.num_train_steps=2",
  "--config.batch_size=2",
  "--config.checkpoint_every_steps=2",
  "--config.eval_every_steps=2",
  "--config.log_every_steps=1",
  "--config.data.max_val_images=1",
)


@pytest.mark.slow  # ~50 s: three trainings on the 291 images; export and init_from have fast tests
def test_291_recipe(readme_copy):
  """The training commands of the shipped models (docs/training.md: x2, then x3 and x4 from
  it), the export into pretrained/ and the curve, on the real 291 images with 2 steps each."""
  trainings = [doc_command(c) for c in doc_commands() if c.startswith(TRAIN_291)]
  assert [re.search(r"edsr_291\.py:(x\d)", c)[1] for c in trainings] == ["x2", "x3", "x4"]
  for command in trainings:
    result = run(readme_copy, command, *SMALL_291)
    assert "training images: 291" in result.stderr
    if ":x2" not in command:
      assert "init_from" in command and "edsr_291_x2" in result.stderr
  for name in ("x2", "x3", "x4"):
    assert checkpoint_steps(readme_copy / "runs" / f"edsr_291_{name}") == [2]
  exports = [
    c
    for c in doc_commands()
    if c.startswith(".venv/bin/python -m edsr_jax.export --checkpoint=runs/")
  ]
  assert len(exports) == 3
  try:  # they replace the copy's shipped weights and picture: put them back afterwards
    for command in exports:
      run(readme_copy, command)
    summary = json.loads((readme_copy / "pretrained/edsr_291_x4/export.json").read_text())
    assert summary["step"] == 2
    assert summary["source"].endswith("runs/edsr_291_x4/checkpoints/2")
    (curve,) = [c for c in doc_commands() if "plot_validation_curve.py runs/edsr_291" in c]
    target = readme_copy / re.search(r"--output=(\S+)", curve)[1]
    target.unlink()
    run(readme_copy, curve)
    assert target.stat().st_size > 0
  finally:
    for folder in ("pretrained", "docs/results"):
      shutil.rmtree(readme_copy / folder, ignore_errors=True)
      shutil.copytree(REPO / folder, readme_copy / folder)


def test_crop_comparison_of_the_shipped_x4(readme_copy):
  command = doc_command(".venv/bin/python scripts/crop_comparison.py")
  target = readme_copy / re.search(r"--output=(\S+)", command)[1]
  target.unlink()  # the README shows the committed picture: the command makes it again
  result = run(readme_copy, command)
  assert re.search(r"bicubic x4: [\d.]+ dB; EDSR x4: [\d.]+ dB", result.stdout)
  with Image.open(target) as made, Image.open(REPO / target.relative_to(readme_copy)) as shipped:
    np.testing.assert_array_equal(np.asarray(made), np.asarray(shipped))
