"""edsr_jax.aot: the production train step compiled by the real TPU compiler (libtpu,
installed by `make venv` into .venv/tpu-compiler), on this CPU-only machine.

Each compile runs the CLI in a real subprocess once per module (a baseline compile takes
~20 s on 2 cores); the tests read its JSON report and its dumped HLO, and check them
against what they compute themselves (state size, analytical FLOPs, HLO text).
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from edsr_jax import accelerators, config_lib, models, train

REPO = pathlib.Path(__file__).resolve().parents[1]
BASELINE = "configs/edsr.py:x2,baseline"
# Words of what libtpu prints when it looks for a TPU that is not there.
LIBTPU_NOISE = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "InitGoogle", "libtpu")


def run_aot(tmp_path, *args, timeout=600):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "TPU_"))}
  return subprocess.run(
    [sys.executable, "-m", "edsr_jax.aot", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
    env=env,
  )


def compile_report(tmp_path_factory, name, *args):
  out = tmp_path_factory.mktemp(name)
  result = run_aot(
    out, *args, f"--output_json={out / 'report.json'}", f"--dump_hlo={out / 'step.hlo'}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  return report, (out / "step.hlo").read_text(), result


@pytest.fixture(scope="module")
def single_host(tmp_path_factory):
  return compile_report(tmp_path_factory, "v5e8", "--tpu=v5litepod-8", f"--config={BASELINE}")


@pytest.fixture(scope="module")
def multi_host_bf16(tmp_path_factory):
  return compile_report(
    tmp_path_factory,
    "v5e16",
    "--tpu=v5litepod-16",
    f"--config={BASELINE}",
    "--config.model.dtype=bfloat16",
    "--noinference",
  )


def state_leaves_and_bytes(config):
  model, tx = train.make_model_and_optimizer(config)
  state = train.train_state_shapes(config, model, tx, train.make_mesh())
  leaves = jax.tree.leaves(state)
  return len(leaves), sum(x.size * x.dtype.itemsize for x in leaves)


def conv_flops(cin, cout, k, n):
  """Multiply-adds x 2 of a k x k 'SAME' conv on n x n, counted tap by tap (slow but plain)."""
  p = k // 2
  taps = sum(1 for y in range(n) for dy in range(-p, p + 1) if 0 <= y + dy < n)
  return 2 * cin * cout * taps * taps


def baseline_x2_train_flops(patches):
  f, n = 64, 48
  forward = (
    conv_flops(3, f, 3, n)
    + 33 * conv_flops(f, f, 3, n)
    + conv_flops(f, 4 * f, 3, n)
    + conv_flops(f, 3, 3, 2 * n)
  )
  # backward: weight gradients of every conv, input gradients of all but the head
  return patches * (3 * forward - conv_flops(3, f, 3, n))


@pytest.mark.parametrize("fixture", ["single_host", "multi_host_bf16"])
def test_train_step_compiles_with_donation_and_one_gradient_all_reduce(fixture, request):
  report, hlo, result = request.getfixturevalue(fixture)
  config = config_lib.load_config_file(BASELINE)
  leaves, logical_bytes = state_leaves_and_bytes(config)
  assert report["fits"] is True
  assert report["hbm_bytes_per_chip"] < report["hbm_capacity_bytes_per_chip"] == 16 * 2**30
  # Every state buffer is aliased to its update: the compiled module's alias map has one
  # entry per state leaf, and what is not aliased is the (small) uint8 batch.
  header = hlo.splitlines()[0]
  assert len(re.findall(r"\{[\d,]*\}: \(\d+, \{[\d,]*\}", header)) == leaves
  step = report["per_scale"]["2"]
  donated = report["donated_bytes_per_chip"]
  assert donated >= logical_bytes
  batch_bytes = report["batch_per_chip"] * 48 * 48 * 3 * (1 + 4)
  assert 0 < step["argument_bytes"] - donated <= 4 * batch_bytes
  # The gradient all-reduce: one fused collective (or two, with the loss) carrying every
  # gradient, in the compute dtype.
  reduces = re.findall(r"= (.*?) all-reduce(?:-start)?\(", hlo)
  assert 1 <= len(reduces) <= 2
  num_params = 1_369_859
  itemsize = 2 if fixture == "multi_host_bf16" else 4
  reduced = step["collectives"]["all-reduce"]["bytes"]
  assert num_params * itemsize <= reduced <= num_params * 4 + 64
  # Nothing leaves the device during the step.
  for op in (" send(", " recv(", " infeed(", " outfeed(", "callback"):
    assert op not in hlo
  assert step["host_transfers"] == []
  # libtpu's no-TPU-here warnings do not reach the user.
  assert not any(word in result.stderr for word in LIBTPU_NOISE), result.stderr


def test_flops_match_the_analytical_count(single_host, multi_host_bf16):
  """The compiler's FLOPs next to a count made here tap by tap. At 1-2 patches per chip
  the TPU compiler folds image columns into the batch with overlapping halos, which
  counts ~20% more (reported, not hidden); at 16 per chip they agree within 1%."""
  for (report, _, _), patches in ((single_host, 2), (multi_host_bf16, 1)):
    step = report["per_scale"]["2"]
    expected = baseline_x2_train_flops(patches)
    assert step["analytical_conv_flops_per_chip"] == expected
    assert 1.0 <= step["flops_per_step_per_chip"] / expected < 1.25
    assert report["bound"] in ("compute", "memory")
    t = max(step["flops_per_step_per_chip"] / 197e12, step["bytes_accessed_per_chip"] / 819e9)
    assert math.isclose(report["estimated_step_seconds"], t)


@pytest.mark.slow
def test_flops_within_one_percent_at_16_patches_per_chip(tmp_path):
  out = tmp_path / "r.json"
  result = run_aot(
    tmp_path,
    "--tpu=v5litepod-8",
    f"--config={BASELINE}",
    "--config.batch_size=128",
    "--noinference",
    f"--output_json={out}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  step = json.loads(out.read_text())["per_scale"]["2"]
  assert abs(step["flops_per_step_per_chip"] / baseline_x2_train_flops(16) - 1) < 0.01


def test_bfloat16_config_runs_bfloat16_convolutions(single_host, multi_host_bf16):
  def conv_operand_types(hlo):
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    return [
      tuple(types[o] for o in operands)
      for operands in re.findall(r"convolution\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
    ]

  bf16 = conv_operand_types(multi_host_bf16[1])
  assert len(bf16) >= 35 * 3 - 1  # forward, and both gradients of all but the head
  assert all(t == ("bf16", "bf16") for t in bf16)
  # float32 weights stay float32 in the float32 step (the compiler may still feed
  # activations to the matrix units in bf16: TPU default precision).
  f32 = conv_operand_types(single_host[1])
  assert any("f32" in t for t in f32)


def test_report_names_the_slice_and_the_inference_tile(single_host, multi_host_bf16):
  one, _, result = single_host
  assert (one["chips"], one["hosts"], one["mesh"]) == (8, 1, {"data": 8})
  assert (multi_host_bf16[0]["chips"], multi_host_bf16[0]["hosts"]) == (16, 4)
  for key in (
    "accelerator",
    "hbm_bytes_per_chip",
    "hbm_capacity_bytes_per_chip",
    "donated_bytes_per_chip",
    "flops_per_step_per_chip",
    "estimated_step_seconds",
  ):
    assert key in one
  # Inference: the tile inference.Upscaler picks for a DIV2K image's x2 LR (678 x 1020).
  from edsr_jax import inference

  config = config_lib.load_config_file(BASELINE)
  plan = inference.Upscaler(config, params=None).plan((678, 1020, 3), 2)
  assert one["inference"]["tile_window"] == list(plan.window)
  assert one["inference"]["fits"] is True
  assert 0 < one["inference"]["hbm_bytes_per_chip"] < 16 * 2**30
  assert "fits" in result.stdout and "estimated (not run)" in result.stdout


# The documented shapes (Cloud TPU system-architecture pages): chips, hosts (TPU VMs).
SLICES = {
  "v4-8": (4, 1),
  "v4-16": (8, 2),
  "v4-32": (16, 4),
  "v5litepod-1": (1, 1),
  "v5litepod-4": (4, 1),
  "v5litepod-8": (8, 1),
  "v5litepod-16": (16, 4),
  "v5litepod-32": (32, 8),
  "v6e-8": (8, 1),
  "v6e-16": (16, 4),
  "v5p-8": (4, 1),
}

TOPOLOGY_PROBE = """
import json, sys
from edsr_jax import aot, accelerators
out = {}
for name in sys.argv[1:]:
  devices = aot.tpu_devices(accelerators.slice_for(name))
  out[name] = [len(devices), len({d.process_index for d in devices}), devices[0].device_kind]
print(json.dumps(out))
"""


def test_accelerator_types_map_to_the_slices_libtpu_builds():
  for name, (chips, hosts) in SLICES.items():
    s = accelerators.slice_for(name)
    assert (s.chips, s.hosts) == (chips, hosts), name
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  result = subprocess.run(
    [sys.executable, "-c", TOPOLOGY_PROBE, *SLICES],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    env=env,
  )
  assert result.returncode == 0, result.stderr
  built = json.loads(result.stdout)
  for name, (chips, hosts) in SLICES.items():
    assert built[name][:2] == [chips, hosts], name
    assert built[name][2] == accelerators.slice_for(name).chip.device_kind
  assert not any(word in result.stderr for word in LIBTPU_NOISE), result.stderr


@pytest.mark.parametrize(
  "args, message",
  [
    (["--tpu=v5litepod-7"], "v5litepod slices come in sizes"),
    (["--tpu=tpu9-8"], "not an accelerator type known here"),
    (["--tpu=v5litepod-8", "--config.batch_size=12"], "does not divide over the 8 chips"),
    (["--tpu=v5litepod-8", "--output_json=README.md/r.json"], "cannot write there"),
    (["--tpu=v5litepod-8", "--dump_hlo=docs"], "a folder; give a file name"),
  ],
)
def test_bad_requests_are_one_line_errors(tmp_path, args, message):
  result = run_aot(tmp_path, f"--config={BASELINE}", *args)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, result.stderr
  assert "Traceback" not in result.stderr


def test_analytical_flops_of_mdsr_count_its_5x5_pre_process():
  from edsr_jax import aot

  config = config_lib.load_config_file("configs/mdsr.py:baseline")
  edsr_like = config.copy_and_resolve_references()
  edsr_like.model.name = "edsr"
  forward_mdsr, _ = aot.forward_conv_flops(config.model, 48, 2)
  forward_edsr, _ = aot.forward_conv_flops(edsr_like.model, 48, 2)
  f = config.model.num_features
  assert forward_mdsr - forward_edsr == 4 * conv_flops(f, f, 5, 48)
  assert models.UPSAMPLE_STAGES[4] == (2, 2)


def test_a_step_that_does_not_fit_is_one_error_line(tmp_path):
  """EDSR at 65,536 patches of 48x48: the TPU compiler refuses it for a v5e chip."""
  out = tmp_path / "report.json"
  result = run_aot(
    tmp_path,
    "--tpu=v5litepod-8",
    "--config=configs/edsr.py:x2",
    "--config.batch_size=65536",
    f"--output_json={out}",
  )
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: edsr x2 at batch 65536 (8192 per chip, float32) does not fit")
  needed = float(re.search(r"needs ([\d.]+) GiB of HBM per chip, capacity 15.75 GiB", last)[1])
  assert needed > 16
  report = json.loads(out.read_text())
  assert report["fits"] is False and report["hbm_bytes_per_chip"] > 16 * 2**30
  assert not any(word in result.stderr for word in LIBTPU_NOISE), result.stderr


@pytest.mark.slow
def test_max_batch_is_the_largest_that_fits(tmp_path):
  """--max_batch on v5litepod-8: its batch compiles and fits, 8 more does not."""
  out = tmp_path / "r.json"
  args = ["--tpu=v5litepod-8", f"--config={BASELINE}", "--noinference"]
  result = run_aot(tmp_path, *args, "--max_batch", f"--output_json={out}", timeout=3000)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(out.read_text())
  best = report["max_batch"]
  assert report["batch_size"] == best and report["fits"] and best % 8 == 0 and best > 16
  over = run_aot(tmp_path, *args, f"--config.batch_size={best + 8}")
  assert over.returncode == 1 and "does not fit" in over.stderr.splitlines()[-1]


def test_h100_host_compiles_without_a_gpu(tmp_path_factory):
  """Deviceless compilation for 8 H100s (JAX's CUDA plugin, our H100 target description):
  memory per GPU, donation, the gradient all-reduce and cuDNN bf16 convolutions."""
  report, hlo, result = compile_report(
    tmp_path_factory,
    "h100",
    "--gpu=h100-8",
    f"--config={BASELINE}",
    "--config.model.dtype=bfloat16",
    "--noinference",
  )
  assert (report["chips"], report["hosts"], report["device_kind"]) == (
    8,
    1,
    "NVIDIA H100 80GB HBM3",
  )
  assert report["fits"] and report["hbm_capacity_bytes_per_chip"] == 80 * 2**30
  leaves, logical_bytes = state_leaves_and_bytes(config_lib.load_config_file(BASELINE))
  assert len(re.findall(r"\{[\d,]*\}: \(\d+, \{[\d,]*\}", hlo.splitlines()[0])) == leaves
  assert report["donated_bytes_per_chip"] >= logical_bytes
  assert "all-reduce" in report["per_scale"]["2"]["collectives"]
  convs = re.findall(r'custom_call_target="__cudnn\$conv\w*"', hlo)
  assert len(convs) >= 35 * 3 - 1
  assert report["per_scale"]["2"]["convolution_dtypes"] == {"bf16 x bf16": len(convs)}
  # No cost analysis from the GPU compiler: the analytical count, said so.
  assert report["flops_source"].startswith("analytical")
  assert report["flops_per_step_per_chip"] == baseline_x2_train_flops(2)
  assert not any(w in result.stderr for w in (*LIBTPU_NOISE, "cuda drivers")), result.stderr


def test_tpu_and_gpu_types_go_with_their_flag(tmp_path):
  for args, message in (
    (["--tpu=h100-8"], "give it as --gpu"),
    (["--gpu=v4-8"], "give it as --tpu"),
    ([], "give one of --tpu"),
  ):
    result = run_aot(tmp_path, f"--config={BASELINE}", *args)
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1]


def test_ctrl_c_stops_a_compile_at_once(tmp_path):
  """Ctrl-C during the (long) TPU compile: one line, exit 130, within a second."""
  import signal
  import time

  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "TPU_"))}
  process = subprocess.Popen(
    [sys.executable, "-m", "edsr_jax.aot", "--tpu=v5litepod-8", "--config=configs/edsr.py:x2"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=REPO,
    env=env,
    # Ctrl-C as in a terminal's foreground: a test suite started as a background job (`&`)
    # hands its children SIGINT ignored, which Python then leaves ignored.
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  # Past start-up and the topology (however loaded this machine is): compiling EDSR
  # takes a minute or more from the line that says it starts.
  while "compiling for v5litepod-8" not in process.stderr.readline():
    assert process.poll() is None
  time.sleep(1)
  assert process.poll() is None
  sent = time.monotonic()
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert time.monotonic() - sent < 5
  assert process.returncode == 130
  assert stderr.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)")
  assert "Traceback" not in stderr


def test_docs_tpu_table_is_the_tools_output():
  """The table of docs/launch.md ("What to expect on TPU") is benchmarks/tpu_table.py's
  rendering of docs/tpu_table.json, whose rows are compiles that fit (each row a real
  `aot.check` report's summary)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    import tpu_table
  finally:
    sys.path.pop(0)
  table = tpu_table.markdown(str(REPO / "docs" / "tpu_table.json"))
  page = (REPO / "docs" / "launch.md").read_text()
  block = re.search(r"<!-- tpu-table:.*?-->\n(.*?)\n<!-- /tpu-table -->", page, re.S)[1]
  assert block == table
  rows = json.loads((REPO / "docs" / "tpu_table.json").read_text())
  presets = {k.split(" | ")[0] for k in rows}
  assert presets == set(tpu_table.PRESETS)
  for name, row in rows.items():
    preset, accelerator, dtype, which = name.split(" | ")
    assert row["fits"] and row["batch"] % row["chips"] == 0, name
    tpu_slice = accelerators.slice_for(accelerator)
    assert (row["chips"], row["hosts"]) == (tpu_slice.chips, tpu_slice.hosts)
    if which == "16":
      assert row["batch"] == 16
    else:
      assert row["batch"] >= rows[f"{preset} | {accelerator} | {dtype} | 16"]["batch"]
