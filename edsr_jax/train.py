"""The training loop: `train_and_evaluate(config, workdir)`, callable from a notebook.

Data parallel with `jax.jit` over a 1-D device mesh: the batch is sharded on the `data`
axis, parameters and optimizer state are replicated, and XLA inserts the gradient
all-reduce. The loop never waits on the device except to fetch logged metrics every
`log_every_steps`; the state is donated to each step; input is prepared ahead.
"""

import contextlib
import functools
import json
import os
import signal
import threading
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from edsr_jax import (
  checkpoint,
  config_lib,
  data,
  errors,
  inference,
  metrics,
  models,
  optim,
  summaries,
  workdir_lock,
)

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # Consecutive steps skipped for a non-finite loss or gradient (0 after a good step).
  nonfinite_streak: jax.Array
  # Whether the state carries an EMA of the parameters: an EMATrainState.
  has_ema: ClassVar[bool] = False

  def with_ema(self, decay: float) -> "TrainState":
    """This state with a new EMA of the parameters, starting at them; decay 0: no EMA."""
    fields = dict(
      step=self.step,
      params=self.params,
      opt_state=self.opt_state,
      nonfinite_streak=self.nonfinite_streak,
    )
    if not decay:
      return TrainState(**fields)
    return EMATrainState(
      **fields, ema_params=jax.tree.map(jnp.copy, self.params), ema_decay=float(decay)
    )


@flax.struct.dataclass
class EMATrainState(TrainState):
  """A TrainState that also carries an exponential moving average of the parameters.

  With config.ema_decay > 0 (as BasicSR's `ema_decay`), after each finite step
  `ema = decay * ema + (1 - decay) * params` for the parameters that step updated.
  Validation, the demo's report and every tool that loads a checkpoint use the EMA. With
  ema_decay = 0 a run's state is a plain TrainState: no average in its checkpoints and
  none computed by its train step.
  """

  ema_params: Any = None  # float32, replicated like params
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)
  has_ema: ClassVar[bool] = True


def eval_params(state: TrainState):
  """The parameters to validate and serve: the EMA when the state has one."""
  return state.ema_params if state.has_ema else state.params


def update_ema(ema, params, decay: float, active):
  """`decay * ema + (1 - decay) * params` for the active parameters (a pytree of Python
  bools, `models.active_params`); the others (MDSR's branches not trained at this step)
  keep their average unchanged, as Adam leaves their parameters."""
  return jax.tree.map(
    lambda on, e, p: decay * e + (1 - decay) * p if on else e, active, ema, params
  )


def new_train_state(params, tx, ema_decay: float = 0.0) -> TrainState:
  """Step 0 with fresh optimizer state (and an EMA starting at `params` if ema_decay > 0)."""
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=tx.init(params), nonfinite_streak=zero)
  return state.with_ema(ema_decay)


def learning_rate_schedule(config) -> optax.Schedule:
  """The paper's step decay: multiplied by lr_decay_factor every lr_decay_steps."""
  return optax.exponential_decay(
    config.learning_rate,
    transition_steps=config.lr_decay_steps,
    decay_rate=config.lr_decay_factor,
    staircase=True,
  )


def make_optimizer(config) -> optim.Adam:
  return optim.Adam(
    learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps
  )


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """The 1-D `data` mesh over `devices` (default: every device of every process).

  `edsr_jax.aot` passes a TPU slice's compile-only devices to build the same mesh."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)


def make_model_and_optimizer(config, dtype=None):
  """The network (compute dtype from config.model.dtype unless given) and its Adam."""
  dtype = models.compute_dtype(config.model.dtype) if dtype is None else jnp.dtype(dtype)
  return models.create_model(config.model, dtype), make_optimizer(config)


def _init_fn(config, model, tx):
  scale = models.model_scales(config.model)[0]
  dummy = jnp.zeros((1, config.patch_size, config.patch_size, 3), jnp.float32)

  def init(rng):
    return new_train_state(model.init(rng, dummy, scale)["params"], tx, config.ema_decay)

  return init


def create_train_state(config, model, tx, mesh, rng) -> TrainState:
  """Initialises parameters directly onto the mesh, replicated."""
  return jax.jit(_init_fn(config, model, tx), out_shardings=NamedSharding(mesh, P()))(rng)


def train_state_shapes(config, model, tx, mesh) -> TrainState:
  """The TrainState `create_train_state` makes, as ShapeDtypeStructs laid out on `mesh`
  (nothing is computed or allocated): what ahead-of-time compilation takes."""
  shapes = jax.eval_shape(_init_fn(config, model, tx), jax.random.key(0))
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def batch_sharding(mesh) -> NamedSharding:
  """A global batch is split over the `data` axis (each process feeds its own rows)."""
  return NamedSharding(mesh, P(DATA_AXIS))


def batch_shapes(config, mesh, scale: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the train step receives at `scale` (uint8 patches, as
  `data.PatchSampler.batch` makes them), as ShapeDtypeStructs sharded on `mesh`."""
  b, p, sharding = config.batch_size, config.patch_size, batch_sharding(mesh)
  return {
    "lr": jax.ShapeDtypeStruct((b, p, p, 3), jnp.uint8, sharding=sharding),
    "hr": jax.ShapeDtypeStruct((b, p * scale, p * scale, 3), jnp.uint8, sharding=sharding),
  }


def state_from_params(params, config) -> TrainState:
  """Step 0 of `config`'s optimizer from given parameters (imported or exported weights),
  replicated on the device mesh as `create_train_state` lays it out."""
  tx = make_optimizer(config)
  replicated = NamedSharding(make_mesh(), P())
  params = jax.device_put(params, replicated)
  return jax.jit(lambda p: new_train_state(p, tx), out_shardings=replicated)(params)


def train_step(state: TrainState, batch, *, model, tx, scale: int):
  """One Adam step on the L1 loss (0..255 scale, as in the paper).

  Only the parameters used at `scale` are updated (MDSR); the others and their optimizer
  state pass through bitwise unchanged, as in PyTorch. A step whose loss or gradient is
  not finite changes nothing but the step count and `nonfinite_streak`, so a non-finite
  update can never reach a checkpoint. An EMATrainState's average follows the same rules.
  """
  lr = batch["lr"].astype(jnp.float32)
  hr = batch["hr"].astype(jnp.float32)

  def loss_fn(params):
    sr = model.apply({"params": params}, lr, scale)
    return jnp.mean(jnp.abs(sr - hr))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  params, opt_state = tx.update(
    grads, state.opt_state, state.params, state.step, models.active_params(state.params, scale)
  )
  finite = jnp.isfinite(loss) & jnp.all(
    jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
  )
  keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
  new_state = state.replace(
    step=state.step + 1,
    params=keep(params, state.params),
    opt_state=keep(opt_state, state.opt_state),
    nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
  )
  if isinstance(state, EMATrainState):
    active = models.active_params(state.params, scale)
    ema = update_ema(state.ema_params, params, state.ema_decay, active)
    new_state = new_state.replace(ema_params=keep(ema, state.ema_params))
  return new_state, {"loss": loss, "finite": finite}


def make_train_step(model, tx, mesh):
  """The jitted step that training runs, and that `edsr_jax.aot` compiles for TPU slices:
  state donated and replicated, batch sharded on `data`, one program per scale."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    functools.partial(train_step, model=model, tx=tx),
    static_argnames="scale",
    donate_argnums=0,
    out_shardings=(replicated, replicated),
  )


def _write_validation(writer, step, upscaler, val_images, scales, config):
  scalars, images = {}, {}
  for s in scales:
    strips = []

    def keep_strip(row, lr, bicubic, sr, hr, s=s, strips=strips):
      if len(strips) < config.num_image_summaries:
        strips.append((row["name"], metrics.comparison_strip(lr, bicubic, sr, hr, s, labels=False)))

    means, _ = metrics.score(upscaler, val_images, s, config.data.val_convention, each=keep_strip)
    suffix = "" if len(scales) == 1 else f"_x{s}"
    scalars.update({f"val/{k}{suffix}": v for k, v in means.items()})
    for name, strip in strips:
      images[f"val/{name}{suffix}/lr_bicubic_sr_hr"] = strip[None]
    logging.info(
      "step %d validation x%d%s: PSNR %.3f dB SSIM %.4f (bicubic %.3f dB / %.4f)",
      step,
      s,
      " (EMA parameters)" if config_lib.has_ema(config) else "",
      means["psnr"],
      means["ssim"],
      means["bicubic_psnr"],
      means["bicubic_ssim"],
    )
  writer.write_scalars(step, scalars)
  if images:
    writer.write_images(step, images)
  return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from the latest checkpoint in `workdir`) and validates periodically.

  Returns the final TrainState once `config.num_train_steps` is reached. If the workdir's
  checkpoint is already at or past it, nothing is trained: a warning says so and the
  restored state is returned.

  The config and the data are checked first, before anything is written. The run then
  holds the workdir's lock (`edsr_jax.workdir_lock`; a busy workdir raises
  `WorkdirBusyError`), released when this function returns or raises. A workdir that
  holds exported or imported weights (`export.json`) is refused: new checkpoints would
  rotate them out; fine-tune from them with `config.init_from` into a new workdir.
  Resuming with a config that differs in anything but bookkeeping (batch size, learning
  rate, seed...) logs each difference and records it in `<workdir>/config_changes.jsonl`.

  Stopping early: in a single process, SIGTERM and a first Ctrl-C (SIGINT) let the step
  in flight finish, save a checkpoint of that step and raise `errors.Preempted` (its
  `step` and `checkpoint` say what was saved; calling this again with the same config
  and workdir resumes there, bitwise as if never stopped). It is raised rather than
  returned so that what follows the call (in a notebook cell, a script) does not run on
  an unfinished model; the command-line tools turn it into exit status 75. SIGTERM during
  start-up (loading data, restoring, compiling) raises `Preempted` with `checkpoint`
  None at once: nothing new to save. A second Ctrl-C raises KeyboardInterrupt at once,
  without saving. The previous SIGTERM and SIGINT handlers are restored before
  returning. With several processes, SIGTERM goes through JAX's preemption sync: every
  process saves the same step and raises Preempted.

  Running out of memory (a train step, validation) raises a UserError naming what to lower.
  """
  config_lib.validate(config, jax.device_count())
  if not str(workdir).strip():  # an unset variable must not mean the current directory
    raise errors.UserError("the workdir is empty: name the folder for checkpoints and logs")
  workdir = checkpoint.absolute(workdir)  # relative to the current directory; gs:// as is
  refuse_weights_folder(workdir)
  is_chief = jax.process_index() == 0
  scales = models.model_scales(config.model)
  preemption = PreemptionWatch()
  try:
    # Data first: a bad folder or a patch larger than an image fails before anything is
    # written or compiled.
    train_images = data.load_train_images(config, scales)
    sampler = data.PatchSampler(
      train_images,
      scales=scales,
      patch_size=config.patch_size,
      global_batch=config.batch_size,
      seed=config.seed,
      augment=config.augment,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    val_images = data.load_val_images(config, scales)
    if val_images is not None:
      for s in scales:
        metrics.check_scorable(val_images, s, config.data.val_convention, "validation image")
    logging.info(
      "training images: %d; validation images: %d",
      len(train_images),
      0 if val_images is None else len(val_images),
    )
    with workdir_lock.acquire(workdir, is_chief=is_chief):
      if workdir_lock.is_remote(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
      return _train(config, workdir, scales, sampler, val_images, preemption)
  except errors.Terminated as e:
    if preemption.armed:  # after start-up: a SIGTERM while exiting, not a preemption
      raise
    raise errors.Preempted(str(e) or "SIGTERM", None, None) from None
  finally:
    preemption.close()  # SIGTERM and SIGINT back to their previous handlers


def refuse_weights_folder(workdir) -> None:
  """Refuses to train in a folder of exported or imported weights (`export.json` beside
  its checkpoints): new checkpoints would rotate its weights out."""
  record = workdir / checkpoint.EXPORT_RECORD
  if record.exists():
    raise errors.CheckpointError(
      f"{workdir} holds exported or imported weights ({record.name}); training there would "
      f"replace them as new checkpoints rotate in. Fine-tune from them into a new workdir "
      f"with config.init_from={workdir}"
    )


# Config keys that change how a run is logged and saved, not what it trains: changing
# them on resume is routine (num_train_steps: train longer).
BOOKKEEPING_KEYS = frozenset(
  {
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
    "num_image_summaries",
    "prefetch_batches",
    "max_nonfinite_steps",
    "init_from",  # read only when a run starts
    "data.cache_dir",
    "data.tfds_data_dir",
    "data.tfds_manual_dir",
    "data.max_val_images",
  }
)


def record_config_changes(saved_config, config, workdir, step: int) -> None:
  """Logs each training setting that differs from the checkpoint's config and appends
  them to `<workdir>/config_changes.jsonl` (one JSON line per resume that changed any)."""
  saved, now = config_lib.flatten(saved_config), config_lib.flatten(config)
  changes = {
    k: [_plain(saved.get(k)), _plain(now.get(k))]
    for k in sorted(set(saved) | set(now))
    if k not in BOOKKEEPING_KEYS and _plain(saved.get(k)) != _plain(now.get(k))
  }
  if not changes:
    return
  for key, (old, new) in changes.items():
    logging.warning(
      "resuming at step %d with config.%s=%r (the checkpoint had %r)", step, key, new, old
    )
  history = workdir / "config_changes.jsonl"
  logging.warning("these changes are recorded in %s", history)
  if jax.process_index() == 0:
    try:
      with history.open("a") as f:
        f.write(json.dumps({"step": step, "changes": changes}) + "\n")
    except OSError as e:
      raise errors.CheckpointError(f"cannot write {history}: {errors.one_line(e)}") from e


def _plain(value):
  """A config value as JSON has it (tuples and lists compare equal)."""
  return json.loads(json.dumps(value, default=str))


def _saved(manager) -> str:
  latest = manager.latest_step()
  return (
    "no checkpoint saved yet" if latest is None else f"checkpoints up to step {latest} are kept"
  )


def _out_of_memory(config, what: str, error, saved: str = "") -> errors.UserError:
  m = config.model
  saved = f"; {saved}" if saved else ""
  return errors.UserError(
    f"out of memory {what} ({errors.one_line(error)[:160]}): config.batch_size="
    f"{config.batch_size}, config.patch_size={config.patch_size}, model {m.name} with "
    f"{m.num_blocks} blocks of {m.num_features} features on {jax.device_count()} "
    f"{jax.devices()[0].platform} device(s); lower config.batch_size or config.patch_size "
    f"(or use more devices){saved}"
  )


def _train(config, workdir, scales, sampler, val_images, preemption) -> TrainState:
  is_chief = jax.process_index() == 0
  with contextlib.ExitStack() as cleanup:  # closes what is opened below, on every way out
    manager = checkpoint.make_manager(workdir, config.max_checkpoints_to_keep)
    # An open manager torn down at exit prints "Event loop is closed" tracebacks.
    cleanup.callback(manager.close)

    mesh = make_mesh()
    model, tx = make_model_and_optimizer(config)
    schedule = learning_rate_schedule(config)
    state = create_train_state(config, model, tx, mesh, jax.random.key(config.seed))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("model %s: %d parameters", config.model.name, num_params)
    if manager.latest_step() is not None:
      state, saved_config = checkpoint.resume(manager, state, config)
      logging.info("resumed from %s at step %d", manager.directory, int(state.step))
      record_config_changes(saved_config, config, workdir, int(state.step))
    elif config.init_from:
      try:
        state = checkpoint.init_from(state, config.init_from, tx, mesh, scales)
      except errors.CheckpointError as e:
        raise errors.CheckpointError(f"config.init_from={config.init_from!r}: {e}") from None
    start_step = int(state.step)
    if start_step >= config.num_train_steps:
      logging.warning(
        "nothing to train: already at step %d >= num_train_steps=%d (checkpoints in %s); "
        "raise config.num_train_steps to train longer",
        start_step,
        config.num_train_steps,
        manager.directory,
      )
      return state

    # Compiled now, during start-up: a SIGTERM while compiling stops at once (nothing to
    # save), and a program that does not fit in memory fails before anything is written.
    step_fn = make_train_step(model, tx, mesh)
    # MDSR: the scales its next steps draw (a rare other one compiles when drawn).
    ahead = range(start_step, min(config.num_train_steps, start_step + 64))
    drawn = sorted({data.scale_for_step(config.seed, k, scales) for k in ahead})
    try:
      compiled = {
        s: step_fn.lower(state, batch_shapes(config, mesh, s), scale=s).compile() for s in drawn
      }
    except Exception as e:
      if errors.out_of_memory(e):
        raise _out_of_memory(config, "compiling the train step", e) from None
      raise

    if is_chief:
      _write_atomically(workdir / "config.json", config.to_json(indent=2))

    # Created once the data and the checkpoint are known to be good: CLU's writers import
    # TensorFlow (seconds).
    writer = summaries.create_writer(workdir, is_chief=is_chief)
    cleanup.push(functools.partial(_close_writer, writer))
    if start_step == 0:
      writer.write_hparams(
        {
          k: v
          for k, v in config_lib.flatten(config).items()
          if isinstance(v, int | float | str | bool)
        }
      )
    report = summaries.report_progress(
      num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps
    )

    # Validation runs the network as inference does (tiled: bounded memory on large images)
    # with the current parameters, set before each use (the state is donated to each step).
    upscaler = inference.Upscaler(config, params=None)
    pending = []  # per-step metrics (device arrays) since the last log
    batches = data.prefetch_batches(
      sampler,
      range(start_step, config.num_train_steps),
      scales,
      batch_sharding(mesh),
      config.prefetch_batches,
    )
    preemption.arm()  # from here on a signal stops the run after saving a step
    try:
      for step, scale, batch in batches:
        what = "in the train step"  # what an out-of-memory error below is reported as
        if scale not in compiled:
          compiled[scale] = step_fn.lower(state, batch, scale=scale).compile()
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, step_metrics = compiled[scale](state, batch)
        pending.append(step_metrics)
        done = step + 1
        is_last = done == config.num_train_steps
        if done % config.log_every_steps == 0 or is_last:
          # The only host-device sync of the loop: fetch the metrics since the last log.
          fetched, streak = jax.device_get((pending, state.nonfinite_streak))
          pending = []
          _log_train_metrics(writer, done, fetched, float(schedule(step)))
          writer.flush()  # a full disk is found here, not after the run
          if streak >= config.max_nonfinite_steps:
            raise errors.DivergedError(
              f"the loss or gradients were not finite for {int(streak)} steps in a row "
              f"(up to step {done}); those steps were skipped and nothing non-finite was "
              f"saved. Latest checkpoint: step {manager.latest_step()}. Lower "
              f"config.learning_rate or check the data."
            )
        report(done)
        if val_images is not None and (done % config.eval_every_steps == 0 or is_last):
          what = f"in validation at step {done}"
          with report.timed("eval"):
            upscaler.params = eval_params(state)
            _write_validation(writer, done, upscaler, val_images, scales, config)
        # Asked at every step: with several processes, this is where they agree to stop.
        stop = preemption.reached(done) and not is_last
        if done % config.checkpoint_every_steps == 0 or is_last or stop:
          checkpoint.save(manager, done, state, config)
        if stop:
          if preemption.interrupted:
            raise KeyboardInterrupt
          raise errors.Preempted(preemption.signal_name, done, manager.directory / str(done))
    except summaries.SummaryError as e:
      raise summaries.SummaryError(f"{e}; {_saved(manager)}") from None
    except Exception as e:
      if not errors.out_of_memory(e):
        raise
      raise _out_of_memory(config, what, e, _saved(manager)) from None
    return state


def _write_atomically(path, text: str) -> None:
  """Writes `path` through a temporary file beside it: a kill never leaves half a file."""
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  try:
    tmp.write_text(text)
    tmp.replace(path)
  except OSError as e:
    raise errors.CheckpointError(f"cannot write {path}: {errors.one_line(e)}") from e
  finally:
    with contextlib.suppress(OSError):
      tmp.unlink()


def _close_writer(writer, exc_type, exc, traceback) -> bool:
  """Closes the summary writer; a failure to write its last summaries is an error unless
  another one is already on its way out (then it is one warning line)."""
  del traceback
  try:
    writer.close()
  except summaries.SummaryError as e:
    if exc_type is None:
      raise
    logging.warning("%s", e)
  return False


def _log_train_metrics(writer, step: int, metrics: list[dict], learning_rate: float):
  finite = np.array([m["finite"] for m in metrics])
  losses = np.array([m["loss"] for m in metrics])[finite]
  scalars = {"train/learning_rate": learning_rate, "train/nonfinite_steps": int((~finite).sum())}
  if losses.size:
    scalars["train/loss"] = float(losses.mean())
  writer.write_scalars(step, scalars)


class PreemptionWatch:
  """Notices SIGTERM (what a preempted VM or a cluster scheduler sends) and Ctrl-C.

  With several processes JAX's coordination service receives SIGTERM and
  `reached_preemption_sync_point` makes every process agree on the step to stop at
  (SIGINT keeps Python's default there). A single process installs its own handlers,
  restored by `close()`. Until `arm()` (start-up: loading, restoring, compiling) SIGTERM
  raises `errors.Terminated` at once, as there is nothing to save yet. Once armed, the
  first SIGTERM or Ctrl-C is noted for `reached`; a Ctrl-C after it raises
  KeyboardInterrupt at once (the user does not want to wait for the save).
  """

  def __init__(self):
    self.signal_name: str | None = None
    self.armed = False
    self.interrupted = False  # a second Ctrl-C
    self._previous = {}
    self._own = jax.process_count() == 1 and threading.current_thread() is threading.main_thread()
    if self._own:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)

  def arm(self) -> None:
    # A SIGTERM whose exception something swallowed (raised inside a callback from C code,
    # which Python only reports) still stops the run here, before the first step.
    if self.signal_name is not None:
      raise errors.Terminated(self.signal_name)
    self.armed = True
    if self._own:
      self._previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, self._on_signal))

  def _on_signal(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if not self.armed:
      self.signal_name = name
      raise errors.Terminated(name)
    if signum == signal.SIGINT and self.signal_name is not None:
      # Also noted: a KeyboardInterrupt raised while the main thread runs a callback from
      # C code is only reported by Python, and the run must still stop without waiting.
      self.interrupted = True
      self.close()
      raise KeyboardInterrupt
    self.signal_name = self.signal_name or name

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None

  def close(self):
    previous, self._previous = self._previous, {}
    for sig, handler in previous.items():
      # None: the handler was not installed from Python; the default is the best guess.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
