"""Tests for `edsr_jax.torch_pickle`, `edsr_jax.torch_weights` and `import_torch`.

PyTorch is a test-only dependency: files are written with `torch.save` from the reference
networks in `torch_reference.py`, imported by the CLI run as a real subprocess, restored
from the orbax checkpoint the way training resumes, and the Flax model's output is
compared with the PyTorch model's.
"""

import ast
import json
import os
import pathlib
import pickle
import shlex
import signal
import struct
import subprocess
import sys
import time
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402

from edsr_jax import (  # noqa: E402
  checkpoint,
  config_lib,
  errors,
  export,
  import_torch,
  models,
  torch_pickle,
  train,
)
from edsr_jax import torch_weights as tw  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def preset(spec):
  return config_lib.load_config_file(REPO_ROOT / "configs" / spec)


# `python -m edsr_jax.import_torch ARGS`, in a process where `import torch` fails: the
# converter must work where PyTorch is not installed.
RUN_CLI_WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
runpy.run_module("edsr_jax.import_torch", run_name="__main__", alter_sys=True)
"""


class CliRuns:
  """Starts CLI runs as subprocesses at once (each spends seconds importing JAX, orbax and
  TensorFlow, mostly waiting), and hands back each one's CompletedProcess."""

  def __init__(self, logdir: pathlib.Path):
    self._logdir, self._running = logdir, {}

  def start(self, name, *args, cwd=REPO_ROOT):
    out, err = (open(self._logdir / f"{name}.{k}", "w+") for k in ("out", "err"))
    proc = subprocess.Popen(
      [sys.executable, "-c", RUN_CLI_WITHOUT_TORCH, *map(str, args)],
      cwd=cwd,
      env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
      stdout=out,
      stderr=err,
      text=True,
    )
    self._running[name] = (proc, out, err, args)

  def result(self, name) -> subprocess.CompletedProcess:
    proc, out, err, args = self._running[name]
    proc.wait(timeout=300)
    with out, err:
      out.seek(0), err.seek(0)
      return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read())


def assert_cli_error(proc, *fragments):
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr
  for fragment in fragments:
    assert str(fragment) in last, (fragment, last)


def save(model, path, legacy=False, dtype=None):
  """`model`'s state_dict as torch.save writes it; with `dtype` (torch.float16 or
  torch.bfloat16) every tensor converted to it, as `model.half().state_dict()` is."""
  state = model.state_dict()
  if dtype is not None:
    state = {k: v.to(dtype) for k, v in state.items()}
  torch.save(state, path, _use_new_zipfile_serialization=not legacy)
  return path


def rounded_(model, dtype):
  """`model` with its trained weights rounded to `dtype` (the mean shift kept exact, as
  the Flax model applies it): what a file saved at that precision computes."""
  with torch.no_grad():
    for p in model.parameters():
      if p.requires_grad:
        p.copy_(p.to(dtype).float())
  return model


def restore(workdir):
  """Config and state restored as training resumes: onto create_train_state's layout."""
  manager = checkpoint.make_manager(workdir)
  assert manager.all_steps() == [0]
  config = checkpoint.restore_config(manager)
  model = models.create_model(config.model)
  tx = train.make_optimizer(config)
  abstract = jax.eval_shape(
    lambda: train.create_train_state(config, model, tx, train.make_mesh(), jax.random.key(7))
  )
  state = checkpoint.restore_state(manager, abstract)
  manager.close()
  return config, model, state


def torch_forward(tmodel, x_nhwc, idx=None):
  with torch.no_grad():
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
    y = tmodel(x) if idx is None else tmodel(x, idx)
  return y.numpy().transpose(0, 2, 3, 1)


def flax_forward(model, params, x_nhwc, scale):
  return np.asarray(model.apply({"params": params}, x_nhwc, scale))


def random_input(seed, h=11, w=9):
  # Not square, so a swapped H / W in a kernel or in the pixel shuffle shows up.
  return np.random.default_rng(seed).uniform(0, 255, (2, h, w, 3)).astype(np.float32)


def tiny_edsr(scale=2, num_blocks=2, num_features=16, seed=0, **kw):
  return ref.randomize_(ref.EDSR(scale, num_blocks, num_features, **kw), seed).eval()


# --------------------------------------------------------------------------------------
# The reference itself.


@pytest.mark.parametrize(
  "name, build, expected",
  [
    ("EDSR baseline x2", lambda: ref.EDSR(2, 16, 64), 1_369_859),
    ("EDSR baseline x3", lambda: ref.EDSR(3, 16, 64), 1_554_499),
    ("EDSR baseline x4", lambda: ref.EDSR(4, 16, 64), 1_517_571),
    ("EDSR x2", lambda: ref.EDSR(2, 32, 256, 0.1), 40_729_603),
    ("EDSR x3", lambda: ref.EDSR(3, 32, 256, 0.1), 43_680_003),
    ("EDSR x4", lambda: ref.EDSR(4, 32, 256, 0.1), 43_089_923),
    ("MDSR baseline", lambda: ref.MDSR((2, 3, 4), 16, 64), 3_227_203),
    ("MDSR", lambda: ref.MDSR((2, 3, 4), 80, 64), 7_953_987),
  ],
)
def test_reference_matches_published_parameter_counts(name, build, expected):
  with torch.device("meta"):  # shapes only
    model = build()
  assert ref.parameter_count(model) == expected, name


def test_reference_state_dict_uses_official_keys():
  keys = set(ref.EDSR(4, 2, 8).state_dict())
  assert {
    "sub_mean.weight",
    "add_mean.bias",
    "head.0.weight",
    "body.0.body.0.weight",
    "body.1.body.2.bias",
    "body.2.weight",
    "tail.0.0.weight",
    "tail.0.2.weight",
    "tail.1.weight",
  } <= keys
  mkeys = set(ref.MDSR((2, 3, 4), 1, 8).state_dict())
  assert {
    "pre_process.2.1.body.2.weight",
    "upsample.0.0.weight",
    "upsample.2.2.weight",
    "body.1.weight",
    "tail.0.bias",
  } <= mkeys
  assert "upsample.1.2.weight" not in mkeys  # x3 is a single stage


# --------------------------------------------------------------------------------------
# The CLI end to end: PyTorch output == Flax output of the imported checkpoint.

CASES = {
  # A true preset size; zip layout (torch >= 1.6); run from the folder of the file, with
  # --input and --output relative to it.
  "edsr_baseline_x2": dict(
    relative=True,
    make=lambda: ref.randomize_(ref.EDSR(2, 16, 64), 1).eval(),
    legacy=False,
    flags=[],
    scales=(2,),
    res_scale=1.0,
    count=1_369_859,
  ),
  # Legacy layout; a size with no official res_scale, given on the command line;
  # bfloat16 weights (its mean shift is 114.5, ... at that precision).
  "edsr_x3_res_scale": dict(
    make=lambda: rounded_(tiny_edsr(3, 2, 16, seed=2, res_scale=0.5), torch.bfloat16),
    dtype=torch.bfloat16,
    legacy=True,
    flags=["--res_scale=0.5"],
    scales=(3,),
    res_scale=0.5,
    count=None,
  ),
  # Two x2 stages; every override given and agreeing with the file; float16 weights
  # (`.half()`).
  "edsr_x4_flags": dict(
    make=lambda: rounded_(tiny_edsr(4, 2, 64, seed=3), torch.float16),
    dtype=torch.float16,
    legacy=False,
    flags=["--model=edsr", "--scale=4", "--num_blocks=2", "--num_features=64"],
    scales=(4,),
    res_scale=1.0,
    count=None,
  ),
  # MDSR, legacy layout, every branch.
  "mdsr": dict(
    make=lambda: ref.randomize_(ref.MDSR((2, 3, 4), 2, 64), 4).eval(),
    legacy=True,
    flags=[],
    scales=(2, 3, 4),
    res_scale=1.0,
    count=None,
  ),
}


class _Evil:
  def __init__(self, func, arg):
    self.func, self.arg = func, arg

  def __reduce__(self):
    return self.func, (self.arg,)


def _torch_zip(path, data_pkl: bytes, storages=None):
  # The layout torch.save writes: <archive>/data.pkl, byteorder, version, data/<key>.
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for key, raw in (storages or {}).items():
      z.writestr(f"archive/data/{key}", raw)
  return path


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """Every CLI run of this module, started together: {name: (CompletedProcess, info)}."""
  root = tmp_path_factory.mktemp("cli")
  runs, info = CliRuns(root), {}
  for case, spec in CASES.items():
    tmodel = spec["make"]()
    path = save(tmodel, root / f"{case}.pt", spec["legacy"], spec.get("dtype"))
    cwd = root if spec.get("relative") else REPO_ROOT
    info[case] = dict(tmodel=tmodel, out=root / case, input=path, cwd=cwd)
    if spec.get("relative"):
      runs.start(case, f"--input={path.name}", f"--output={case}", *spec["flags"], cwd=root)
    else:
      runs.start(case, f"--input={path}", f"--output={root / case}", *spec["flags"])
  # A pickle that would run `touch` when loaded by pickle.load / torch.load(weights_only=0).
  marker = root / "pwned"
  evil = _torch_zip(root / "evil.pt", pickle.dumps(_Evil(os.system, f"touch {marker}"), 2))
  info["evil"] = dict(path=evil, marker=marker, out=root / "evil_out")
  runs.start("evil", f"--input={evil}", f"--output={root / 'evil_out'}")
  return {name: (runs.result(name), info[name]) for name in info}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_import_matches_pytorch(case, cli):
  spec = CASES[case]
  proc, info = cli[case]
  tmodel, out = info["tmodel"], info["out"]
  assert proc.returncode == 0, proc.stderr
  count = ref.parameter_count(tmodel)
  if spec["count"] is not None:
    assert count == spec["count"]
  assert f"parameters: {count:,}" in proc.stdout
  assert f"res_scale: {spec['res_scale']:g}" in proc.stdout

  config, model, state = restore(out)
  assert config.model.name == ("mdsr" if len(spec["scales"]) > 1 else "edsr")
  assert models.model_scales(config.model) == spec["scales"]
  assert config.model.res_scale == spec["res_scale"]
  assert int(state.step) == 0
  assert sum(x.size for x in jax.tree.leaves(state.params)) == count
  adam = state.opt_state
  assert all(int(c) == 0 for c in jax.tree.leaves(adam.count))
  assert all(not np.any(m) for m in jax.tree.leaves(adam.mu))

  diffs = []
  for idx, scale in enumerate(spec["scales"]):
    x = random_input(idx)
    want = torch_forward(tmodel, x, idx if len(spec["scales"]) > 1 else None)
    got = flax_forward(model, state.params, x, scale)
    assert got.shape == (2, 11 * scale, 9 * scale, 3)
    diffs.append(float(np.max(np.abs(got - want))))
  print(f"{case}: max abs diff per scale {diffs}")
  assert max(diffs) < 1e-3, diffs

  if case == "edsr_baseline_x2":  # fine-tuning with the preset accepts this checkpoint
    checkpoint.check_same_model(config, preset("edsr.py:x2,baseline"), str(out))
  # The record beside checkpoints/ says the folder holds imported weights.
  record = json.loads((out / checkpoint.EXPORT_RECORD).read_text())
  assert record == {
    "source": str(info["input"]),
    "imported": True,
    "network": proc.stdout.splitlines()[0].split(": ", 1)[1],
    "res_scale": spec["res_scale"],
    "num_params": count,
  }
  assert not list(out.parent.glob(f".{out.name}.write-tmp-*"))
  if case == "edsr_x3_res_scale":  # and res_scale matters: the default 1.0 is far off
    wrong_config = config.model.copy_and_resolve_references()
    wrong_config.res_scale = 1.0
    off = flax_forward(models.create_model(wrong_config), state.params, random_input(0), 3)
    assert np.max(np.abs(off - torch_forward(tmodel, random_input(0)))) > 1.0


def hint_config(hint: str, cwd: pathlib.Path):
  """The config a printed `python -m edsr_jax.main --config=... --config.<key>=...`
  command trains, as main builds it; and its --config.init_from and --workdir."""
  args = shlex.split(hint)
  assert args[:3] == ["python", "-m", "edsr_jax.main"], hint
  flags = dict(a[2:].split("=", 1) for a in args[3:])
  spec = flags.pop("config")
  path, _, arg = spec.partition(":")
  config = config_lib.load_config_file(cwd / path, arg or None)
  init_from, workdir = flags.pop("config.init_from"), flags.pop("workdir")
  for key, value in flags.items():
    assert key.startswith("config.model."), key
    config.model[key.removeprefix("config.model.")] = ast.literal_eval(value)
  config.data.train_dir = config.data.val_dir = str(cwd)  # "your data flags"
  config_lib.validate(config)
  return config, init_from, workdir


@pytest.mark.parametrize("case", list(CASES))
def test_cli_hint_fine_tunes_from_a_new_workdir(case, cli):
  """The last line is a command that trains the imported network from these weights in a
  new folder (`--config.init_from`), never in the output itself, whose one checkpoint
  a run in it would rotate out."""
  proc, info = cli[case]
  last = proc.stdout.strip().splitlines()[-1]
  prefix = "fine-tune from it in a new workdir, adding your data flags: "
  assert last.startswith(prefix), last
  config, init_from, workdir = hint_config(last.removeprefix(prefix), info["cwd"])
  assert (info["cwd"] / init_from).resolve() == info["out"].resolve()
  assert (info["cwd"] / workdir).resolve() == info["out"].with_name(f"{case}_finetuned")
  saved, _, _ = restore(info["out"])
  checkpoint.check_same_model(saved, config, str(info["out"]))  # init_from accepts it
  overrides = [a for a in shlex.split(last) if a.startswith("--config.model.")]
  if case in ("edsr_baseline_x2", "mdsr"):  # presets; mdsr: the preset with 2 blocks
    assert len(overrides) == (0 if case == "edsr_baseline_x2" else 1), last
  assert not (info["cwd"] / workdir).exists()


# --------------------------------------------------------------------------------------
# Unsafe files: nothing runs.


def test_cli_refuses_pickle_that_runs_code(cli):
  proc, info = cli["evil"]
  assert_cli_error(
    proc,
    "refusing to load",
    info["path"],
    f"{os.system.__module__}.system",
    "which a weights file does not need",
  )
  assert not info["marker"].exists()
  assert not info["out"].exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize(
  "func, name",
  [
    (os.system, f"{os.system.__module__}.system"),
    (eval, "builtins.eval"),
    (subprocess.call, "subprocess.call"),
  ],
)
def test_refuses_unsafe_globals_anywhere(func, name, layout, tmp_path):
  marker = tmp_path / "pwned"
  arg = (
    f"touch {marker}"
    if func is os.system
    else f"open({str(marker)!r}, 'w')"
    if func is eval
    else ["touch", str(marker)]
  )
  # Hidden as a value inside an otherwise ordinary state_dict.
  # Protocol 4 (STACK_GLOBAL) names globals as Python 3 does; torch writes protocol 2.
  payload = pickle.dumps({"head.0.bias": _Evil(func, arg)}, protocol=4)
  path = tmp_path / "evil.pt"
  if layout == "zip":
    _torch_zip(path, payload)
  else:  # the legacy layout's first pickle (the magic number) is the payload
    path.write_bytes(payload)
  with pytest.raises(torch_pickle.TorchFileError, match=f"refusing to load .*{name}"):
    torch_pickle.load_state_dict(path)
  assert not marker.exists()


def test_refuses_a_pickled_module(tmp_path):
  path = tmp_path / "model.pt"
  torch.save(tiny_edsr(), path)  # the whole nn.Module, not its state_dict
  with pytest.raises(torch_pickle.TorchFileError, match="refusing to load .*EDSR"):
    torch_pickle.load_state_dict(path)


def _hand_pickle(numel, offset, size, stride):
  """{'w': tensor} in the opcodes torch.save writes, with any storage geometry."""

  def text(s):
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw

  def ints(values):
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

  storage = (
    b"("
    + text("storage")
    + b"ctorch\nFloatStorage\n"
    + text("0")
    + text("cpu")
    + b"J"
    + struct.pack("<i", numel)
    + b"tQ"
  )
  tensor = (
    b"ctorch._utils\n_rebuild_tensor_v2\n("
    + storage
    + b"J"
    + struct.pack("<i", offset)
    + ints(size)
    + ints(stride)
    + b"\x89tR"
  )
  return b"\x80\x02}" + text("w") + tensor + b"s."


@pytest.mark.parametrize(
  "offset, size, stride, ok",
  [
    (2, (2, 3), (4, 1), True),  # last element 2 + 4 + 2 = 8 < 12
    (4, (2, 3), (6, 1), False),  # reaches element 4 + 6 + 2 = 12 of 12
    (0, (3,), (1000,), False),
  ],
)
def test_tensor_geometry_is_bounds_checked(offset, size, stride, ok, tmp_path):
  data = np.arange(12, dtype=np.float32)
  path = _torch_zip(
    tmp_path / "geom.pt", _hand_pickle(12, offset, size, stride), {"0": data.tobytes()}
  )
  if ok:
    got = torch_pickle.load_state_dict(path)["w"]
    want = np.lib.stride_tricks.as_strided(data[offset:], size, [4 * s for s in stride])
    np.testing.assert_array_equal(got, want)
  else:
    with pytest.raises(torch_pickle.TorchFileError, match="'w' .* reaches element"):
      torch_pickle.load_state_dict(path)


# --------------------------------------------------------------------------------------
# Broken files.


def test_refuses_files_that_are_not_torch_weights(tmp_path):
  good_zip = save(tiny_edsr(), tmp_path / "good.pt")
  good_legacy = save(tiny_edsr(), tmp_path / "good_legacy.pt", legacy=True)
  cases = {
    "text.pt": (b"hello, I am not a checkpoint\n", "is not a torch weights file"),
    "empty.pt": (b"", "is not a torch weights file"),
    "truncated.pt": (good_zip.read_bytes()[:5000], "is not a readable torch file"),
    "truncated_legacy.pt": (good_legacy.read_bytes()[:-100], "is truncated|holds .* bytes"),
    "cut_legacy.pt": (good_legacy.read_bytes()[:300], "is not a readable torch file"),
  }
  for name, (raw, message) in cases.items():
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(torch_pickle.TorchFileError, match=message) as info:
      torch_pickle.load_state_dict(path)
    assert str(path) in str(info.value)
  with pytest.raises(torch_pickle.TorchFileError, match="cannot read .*missing.pt"):
    torch_pickle.load_state_dict(tmp_path / "missing.pt")
  # A zip that is not a torch archive, and one whose storage entry was cut short.
  with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(torch_pickle.TorchFileError, match="not a torch checkpoint"):
    torch_pickle.load_state_dict(tmp_path / "plain.zip")
  short = _torch_zip(
    tmp_path / "short.pt",
    _hand_pickle(12, 0, (12,), (1,)),
    {"0": np.zeros(5, np.float32).tobytes()},
  )
  with pytest.raises(torch_pickle.TorchFileError, match="holds 20 bytes.* needs 48"):
    torch_pickle.load_state_dict(short)


def test_reader_matches_torch_load_for_views_and_dtypes(tmp_path):
  base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
  state = {
    "view": base[1:4, 2:7],
    "transposed": base.t(),
    "half": torch.randn(3, 4).half(),
    "bf16": torch.randn(5).bfloat16(),
    "scalar": torch.tensor(2.5),
    "double": torch.randn(2, 2, dtype=torch.float64),
  }
  for legacy in (False, True):
    path = tmp_path / f"mixed_{legacy}.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    got = torch_pickle.load_state_dict(path)
    assert list(got) == list(state)
    for key, value in state.items():
      np.testing.assert_array_equal(
        got[key], value.float().numpy() if key == "bf16" else value.numpy()
      )
    # What each tensor was in the file (bfloat16 is read widened to float32).
    assert got.dtypes == {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()}


# --------------------------------------------------------------------------------------
# Flags that contradict the file, and files that are not the official network.


@pytest.fixture(scope="module")
def edsr_file(tmp_path_factory):
  return save(tiny_edsr(2, 2, 16), tmp_path_factory.mktemp("edsr") / "edsr_x2.pt")


@pytest.fixture(scope="module")
def mdsr_file(tmp_path_factory):
  model = ref.randomize_(ref.MDSR((2, 3, 4), 1, 8), 5)
  return save(model, tmp_path_factory.mktemp("mdsr") / "mdsr.pt")


@pytest.mark.parametrize(
  "which, overrides, fragments",
  [
    ("edsr", dict(model="mdsr"), ["--model=mdsr", "tail.0.0.weight", "(64, 16, 3, 3)"]),
    ("mdsr", dict(model="edsr"), ["--model=edsr", "pre_process.0.0.body.0.weight", "(8, 8, 5, 5)"]),
    (
      "edsr",
      dict(num_blocks=3),
      [
        "--num_blocks=3",
        "2 residual blocks",
        "no body.2.body.0.weight",
        "body.2.weight of shape (16, 16, 3, 3)",
      ],
    ),
    (
      "edsr",
      dict(num_blocks=1),
      ["--num_blocks=1", "body.1.body.0.weight of shape (16, 16, 3, 3) is a residual block"],
    ),
    ("edsr", dict(num_features=64), ["--num_features=64", "head.0.weight", "(16, 3, 3, 3)"]),
    (
      "edsr",
      dict(scale=3),
      ["--scale=3", "tail.0.0.weight has shape (64, 16, 3, 3)", "x2 upsampler", "(144, 16, 3, 3)"],
    ),
    (
      "edsr",
      dict(scale=4),
      ["--scale=4", "tail.0.0.weight has shape (64, 16, 3, 3)", "second x2 stage tail.0.2.weight"],
    ),
    ("mdsr", dict(scales=(2, 4, 3)), ["--scales=2,4,3", "upsample.1.0.weight (72, 8, 3, 3) -> x3"]),
    ("mdsr", dict(scale=2), ["--scale is for EDSR"]),
  ],
)
def test_contradicting_flags_name_the_tensor(
  which, overrides, fragments, edsr_file, mdsr_file, tmp_path
):
  path = edsr_file if which == "edsr" else mdsr_file
  with pytest.raises(errors.WeightsError) as info:
    import_torch.convert(path, tmp_path / "run", res_scale=1.0, **overrides)
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))
  assert not (tmp_path / "run").exists()


def test_the_mapping_names_its_arguments_and_the_cli_its_flags(edsr_file, mdsr_file):
  with pytest.raises(errors.WeightsError) as info:
    tw.detect_architecture(tw.read_state_dict(edsr_file), num_blocks=3)
  assert str(info.value).startswith("num_blocks=3, but the file has 2 residual blocks")
  with pytest.raises(errors.WeightsError) as info:
    tw.detect_architecture(tw.read_state_dict(mdsr_file), scales=(2, 4, 3))
  assert str(info.value).startswith("scales=(2, 4, 3), but the file's upsamplers are")
  assert "--" not in str(info.value)
  with pytest.raises(errors.WeightsError, match=r"^cannot read .*missing\.pt"):
    tw.read_state_dict(edsr_file.parent / "missing.pt")  # the reader's error, as a user error


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
  state = tiny_edsr().state_dict()
  del state["body.1.body.2.bias"]
  state["extra.weight"] = torch.zeros(3)
  torch.save(state, tmp_path / "odd.pt")
  with pytest.raises(
    errors.WeightsError,
    match=r"missing tensors: body\.1\.body\.2\.bias.*unexpected tensors: "
    r"extra\.weight",
  ):
    import_torch.convert(tmp_path / "odd.pt", tmp_path / "run", res_scale=1.0)
  state = tiny_edsr().state_dict()
  state["body.0.body.2.weight"] = torch.zeros(16, 16, 5, 5)
  torch.save(state, tmp_path / "wrong_kernel.pt")
  with pytest.raises(
    errors.WeightsError,
    match=r"body\.0\.body\.2\.weight has shape "
    r"\(16, 16, 5, 5\).* needs \(16, 16, 3, 3\)",
  ):
    import_torch.convert(tmp_path / "wrong_kernel.pt", tmp_path / "run", res_scale=1.0)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "kw, key, dtype",
  [
    (dict(rgb_range=1.0), "sub_mean.bias", None),  # weights trained on 0..1 inputs
    (dict(rgb_std=(0.5, 0.5, 0.5)), "sub_mean.weight", None),
    # At half precision the standard mean is 114.4375, ... (float16), 114.5, ... (bfloat16):
    # accepted (the CLI cases above); another one is still refused.
    (
      dict(rgb_range=1.0),
      r"sub_mean.bias is \[-0.4487, .*\(float16\), .*standard DIV2K mean shift "
      r"\(\[-114.4375, -111.4375, -103.0\] at float16 precision",
      "half",
    ),
    (dict(rgb_range=254.0), r"sub_mean.bias is \[-114.0, .*\(bfloat16\), .*\[-114.5, ", "bf16"),
  ],
)
def test_refuses_a_different_mean_shift(kw, key, dtype, tmp_path):
  dtype = {None: None, "half": torch.float16, "bf16": torch.bfloat16}[dtype]
  path = save(tiny_edsr(**kw), tmp_path / "shifted.pt", dtype=dtype)
  with pytest.raises(errors.WeightsError, match=key) as refused:
    import_torch.convert(path, tmp_path / "run", res_scale=1.0)
  assert "standard DIV2K mean shift" in str(refused.value)
  assert not (tmp_path / "run").exists()


def test_half_precision_mean_shift_is_compared_at_that_precision():
  mean = np.asarray(models.DIV2K_RGB_MEAN, np.float32) * np.float32(models.RGB_RANGE)
  for dtype, spacing in ((torch.float16, 0.0625), (torch.bfloat16, 0.5)):
    stored = torch.from_numpy(mean).to(dtype)
    expected, ulp = tw.round_to(mean, str(dtype).removeprefix("torch."))
    np.testing.assert_array_equal(expected, stored.double().numpy())
    assert np.all(ulp == spacing)
    assert np.max(np.abs(stored.double().numpy() - mean)) > 1e-3  # refused before


def test_res_scale_defaults_from_the_official_size(edsr_file, tmp_path):
  # 256 features: the full EDSR, res_scale 0.1.
  path = save(ref.EDSR(2, 1, 256, 0.1), tmp_path / "full.pt")
  summary = import_torch.convert(path, tmp_path / "full")
  assert summary["res_scale"] == 0.1
  manager = checkpoint.make_manager(tmp_path / "full")
  assert checkpoint.restore_config(manager).model.res_scale == 0.1
  manager.close()
  # An unofficial size has no default: refused rather than guessed.
  with pytest.raises(errors.WeightsError, match="pass --res_scale"):
    import_torch.convert(edsr_file, tmp_path / "tiny")
  assert not (tmp_path / "tiny").exists()


# `python -m edsr_jax.import_torch ARGS` whose checkpoint save, once done, waits (in the
# temporary folder, before the swap into --output) until the test has sent its signal:
# the signal then comes while the write is in progress, every time.
RUN_CLI_SAVE_WAITS = """
import os, pathlib, runpy, sys, time
sys.modules["torch"] = None
from edsr_jax import checkpoint
save, sent = checkpoint.save, pathlib.Path(os.environ["TEST_SIGNAL_SENT"])

def save_then_wait(*args, **kwargs):
  save(*args, **kwargs)
  pathlib.Path(os.environ["TEST_SAVED"]).touch()
  deadline = time.monotonic() + 120
  while not sent.exists() and time.monotonic() < deadline:
    time.sleep(0.01)

checkpoint.save = save_then_wait
runpy.run_module("edsr_jax.import_torch", run_name="__main__", alter_sys=True)
"""


def test_sigterm_while_writing_leaves_no_temporary_and_the_output_as_it_was(edsr_file, tmp_path):
  """A real SIGTERM during `import_torch --overwrite`'s write: exit 143 with one line, the
  temporary folder removed, the checkpoints already in --output untouched. The write also
  removed the temporary folder a killed (SIGKILL) write had left, and kept that of a
  write still running."""
  out = tmp_path / "run"
  import_torch.convert(edsr_file, out, res_scale=1.0)
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = tmp_path / f".run.write-tmp-{dead.pid}-0123abcd"  # left by a SIGKILL
  (stale / "checkpoints" / "0.orbax-checkpoint-tmp").mkdir(parents=True)
  live = tmp_path / f".run.write-tmp-{os.getpid()}-89abcdef"
  live.mkdir()
  saved, sent = tmp_path / "saved", tmp_path / "sent"
  other = save(tiny_edsr(seed=9), tmp_path / "other.pt")
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  env.update(TEST_SAVED=str(saved), TEST_SIGNAL_SENT=str(sent))
  flags = [f"--input={other}", f"--output={out}", "--res_scale=1", "--overwrite"]
  proc = subprocess.Popen(
    [sys.executable, "-c", RUN_CLI_SAVE_WAITS, *flags],
    cwd=REPO_ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 120
  while not saved.exists():
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline
    time.sleep(0.01)
  writing = list(tmp_path.glob(f".run.write-tmp-{proc.pid}-*"))
  assert len(writing) == 1 and (writing[0] / "checkpoints" / "0").is_dir()
  proc.send_signal(signal.SIGTERM)
  sent.touch()
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr
  assert "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == (
    "stopped by SIGTERM; nothing half-written was left behind"
  )
  assert "wrote" not in stdout
  assert sorted(p.name for p in tmp_path.glob(".run.write-tmp-*")) == [live.name]
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_stale_temporaries_are_removed_and_a_swap_cut_short_is_undone(tmp_path):
  """What a SIGKILL leaves beside an output: the next write removes it; one killed between
  moving the old checkpoints aside and moving the new ones in gives the old ones back."""
  out = tmp_path / "run"
  out.mkdir()
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = tmp_path / f".run.write-tmp-{dead.pid}-0123abcd"
  (stale / "replaced-checkpoints" / "0").mkdir(parents=True)
  (stale / "replaced-checkpoints" / "0" / "weights").write_text("old")
  other = tmp_path / f".other.write-tmp-{dead.pid}-0123abcd"  # another output's: kept
  other.mkdir()
  assert export.remove_stale_temporaries(str(out)) == [str(stale)]
  assert (out / "checkpoints" / "0" / "weights").read_text() == "old"
  assert not stale.exists() and other.exists()


def test_refuses_to_overwrite_checkpoints(edsr_file, tmp_path):
  out = tmp_path / "run"
  import_torch.convert(edsr_file, out, res_scale=1.0)
  before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  with pytest.raises(errors.CheckpointError, match="already holds checkpoint") as refused:
    import_torch.convert(edsr_file, out, res_scale=1.0)
  assert "--" not in str(refused.value)  # the library names no CLI flag; the CLI adds it
  assert "--overwrite to replace them" in str(refused.value.for_flag())
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

  other = save(tiny_edsr(seed=9), tmp_path / "other.pt")
  import_torch.convert(other, out, res_scale=1.0, overwrite=True)
  _, _, state = restore(out)
  want = torch_pickle.load_state_dict(other)["head.0.bias"]
  np.testing.assert_array_equal(np.asarray(state.params["head"]["bias"]), want)
