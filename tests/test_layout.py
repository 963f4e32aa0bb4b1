"""The package's layout: its imports form a tree, and deferred imports only defer TensorFlow.

Read from the source with `ast`, nothing is imported: every `import` of an `edsr_jax`
module, at module level or inside a function, is an edge of the import graph.
"""

import ast
import os
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "edsr_jax"
MODULES = {p.stem: p for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}
# What an import inside a function may defer: TensorFlow, and what imports it.
TENSORFLOW = ("tensorflow", "tensorflow_datasets", "clu")
# What only `edsr_jax.deploy`'s exports and ONNX runs need (jax2onnx imports every plugin it
# has, seconds); jax.experimental.jax2tf imports TensorFlow.
DEPLOY_ONLY = ("jax2onnx", "onnx", "onnxruntime")


def _imports(path: pathlib.Path):
  """(imported module, line, inside a function) for every import statement of `path`."""
  tree = ast.parse(path.read_text(), filename=str(path))
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
      if isinstance(child, ast.Import):
        found.extend((alias.name, child.lineno, in_function) for alias in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
        if child.module == "edsr_jax":  # from edsr_jax import a, b: modules a and b
          found.extend((f"edsr_jax.{a.name}", child.lineno, in_function) for a in child.names)
        else:
          found.append((child.module, child.lineno, in_function))
      visit(child, nested)

  visit(tree, False)
  return found


def _project_edges() -> dict[str, set[str]]:
  edges = {}
  for name, path in MODULES.items():
    edges[name] = {
      module.split(".")[1]
      for module, _, _ in _imports(path)
      if module.startswith("edsr_jax.") and module.split(".")[1] in MODULES
    }
  return edges


def _imports_tensorflow(name: str) -> bool:
  return any(module.split(".")[0] in TENSORFLOW for module, _, _ in _imports(MODULES[name]))


def test_imports_form_a_tree():
  edges = _project_edges()
  assert sum(len(e) for e in edges.values()) > 20  # the parser sees the imports
  done, path = set(), []

  def visit(name):
    if name in path:
      cycle = path[path.index(name) :] + [name]
      pytest.fail(f"import cycle: {' -> '.join(cycle)}")
    if name in done:
      return
    path.append(name)
    for other in sorted(edges[name]):
      visit(other)
    path.pop()
    done.add(name)

  for name in edges:
    visit(name)


def test_imports_inside_functions_only_defer_tensorflow_and_say_so():
  deferred = []
  for name, path in MODULES.items():
    lines = path.read_text().splitlines()
    for module, lineno, in_function in _imports(path):
      if not in_function:
        continue
      deferred.append(f"{name}: {module}")
      top = module.split(".")[0]
      project = module.split(".")[1] if top == "edsr_jax" else None
      deploy_only = top in DEPLOY_ONLY or module == "jax.experimental.jax2tf"
      assert top in TENSORFLOW or deploy_only or (project and _imports_tensorflow(project)), (
        f"edsr_jax/{name}.py:{lineno} imports {module} inside a function; only TensorFlow "
        f"({', '.join(TENSORFLOW)}) or a module that imports it may be deferred"
      )
      # The comment right above (past the other imports of the group) says why.
      k = lineno - 2
      while k >= 0 and lines[k].strip().startswith(("import ", "from ")):
        k -= 1
      comment = []
      while k >= 0 and lines[k].strip().startswith("#"):
        comment.append(lines[k])
        k -= 1
      said = " ".join(comment).lower()
      assert "tensorflow" in said or (deploy_only and "onnx" in said), (
        f"edsr_jax/{name}.py:{lineno}: a deferred import needs a comment saying it defers "
        "TensorFlow"
      )
  assert deferred  # the test sees the deferred imports (TFDS, CLU)


def test_each_shared_name_is_defined_once():
  """Constants and helpers that once lived in two or three modules have one home each."""
  homes = {}
  for name, path in MODULES.items():
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.FunctionDef | ast.ClassDef):
        homes.setdefault(node.name, []).append(name)
      elif isinstance(node, ast.Assign):
        for target in node.targets:
          if isinstance(target, ast.Name):
            homes.setdefault(target.id, []).append(name)
  shared = {
    "SCALES": "models",
    "UPSAMPLE_STAGES": "models",
    "SR_PATTERN": "image_io",
    "IMAGE_EXTENSIONS": "image_io",
    "flip_transpose": "image_io",
    "read_rgb": "image_io",
    "round_to_uint8": "metrics",
    "quantize": "metrics",
    "bicubic_upscale": "metrics",
    "score": "metrics",
    "one_line": "errors",
    "log": "cli",
    "UserError": "errors",
    "ConfigError": "errors",
    "ImageError": "errors",
    "CheckpointError": "errors",
    "WeightsError": "errors",
    "find_step_dir": "checkpoint",
  }
  for name, home in shared.items():
    assert homes.get(name) == [home], f"{name} is defined in {homes.get(name)}"
  for name in ("_one_line", "_log", "_transform", "_UPSAMPLE_STAGES", "load_image"):
    assert name not in homes, f"{name} is back in {homes[name]}"
  exceptions = [n for n, where in homes.items() if n.endswith("Error") for _ in where]
  assert sorted(exceptions) == sorted(
    ["UserError", "ConfigError", "ImageError", "CheckpointError", "WeightsError"]
    + ["DivergedError", "TorchFileError"]  # torch_pickle stands alone: no project imports
    + ["WorkdirLockError", "WorkdirBusyError"]  # UserErrors of the lock, kept with it
    + ["OutputError"]  # the folder export / import_torch write, kept with the writer
    + ["SummaryError"]  # TensorBoard events the file system refused, kept with the writer
  )
  assert not any(m.startswith("edsr_jax") for m, _, _ in _imports(MODULES["torch_pickle"]))


def test_no_two_module_names_differ_by_a_suffix():
  """evaluate.py next to evaluation.py, or score.py next to scoring.py, says nothing."""
  names = sorted(MODULES)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      common = len(os.path.commonprefix([a, b]))
      assert common < min(len(a), len(b)) - 1, f"{a}.py and {b}.py"


def test_library_messages_name_no_command_line_flag():
  """A flag belongs to the tool that defines it: library code names the value (a folder,
  a config key) and the tool that reads the flag adds the flag's name to the message."""
  tools = {n for n, p in MODULES.items() if re.search(r"^def _define_flags", p.read_text(), re.M)}
  # cli runs the tools; config_lib checks the --config flag's arguments for them.
  library = set(MODULES) - tools - {"cli", "config_lib"}
  assert {"checkpoint", "train", "data", "inference", "workdir_lock"} <= library
  found = []
  for name in sorted(library):
    tree = ast.parse(MODULES[name].read_text())
    docstrings = {
      id(node.body[0].value)
      for node in ast.walk(tree)
      if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
      and node.body
      and isinstance(node.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if id(node) not in docstrings:
          found += [
            f"{name}.py:{node.lineno}: {f}"
            for f in re.findall(r"(?<![\w-])--[a-z][\w.]*", node.value)
          ]
  assert not found, found
