"""The run folder train.py writes: the one place that knows its layout.

    WORKDIR/config.json                          the run's config (read_config, write_config)
    WORKDIR/split.npz                            the data split (data.protocols.SPLIT_FILE)
    WORKDIR/metrics.json                         final metrics, by code length
    WORKDIR/tensorboard/                         TensorBoard events
    WORKDIR/bits_<c>/checkpoints/<step>/         orbax checkpoints: state/ and meta/
    WORKDIR/bits_<c>/damaged_checkpoints/<step>/ unreadable checkpoints set aside
    WORKDIR/bits_<c>/codes.npz, curves.png       the final evaluation's codes and curves
    WORKDIR/bits_<c>/eval/                       eval.py --workdir's output

Training (training.train), evaluation (schn_jax.evaluator) and inference
(inference.TrainedModel, export) find every file and read every checkpoint
through this module: `Checkpoints` saves and restores whole training states,
`read_checkpoint` reads the parts that evaluation and inference need. Both skip
a checkpoint that cannot be read back (a disk error, a file damaged by hand)
with a warning and take the newest older one that reads; only when none does
is the read refused, naming the folder. config.json and metrics.json are read
through `read_json`, so a damaged file gives the same one-line error wherever
it is met.
"""

import dataclasses
import json
import logging
import pathlib
import shutil
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from schn_jax import errors, files
from schn_jax.models import variables_template
from schn_jax.models.visual import input_channels

CONFIG = "config.json"
METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
CODES = "codes.npz"
CURVES = "curves.png"


def bits_dir(workdir, bits):
  return pathlib.Path(workdir) / f"bits_{bits}"


def checkpoints_dir(workdir, bits):
  return bits_dir(workdir, bits) / "checkpoints"


def damaged_dir(workdir, bits):
  """Beside checkpoints/, so that orbax never sees what is set aside."""
  return bits_dir(workdir, bits) / "damaged_checkpoints"


def eval_dir(workdir, bits):
  return bits_dir(workdir, bits) / "eval"


def read_json(path, fix):
  """The JSON object in `path`; a damaged or non-object file raises a
  CheckpointError naming it, followed by `fix` (what the user should do)."""
  path = pathlib.Path(path)
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.CheckpointError(f"{path} is not valid JSON ({e}); {fix}") from None
  if not isinstance(value, dict):
    raise errors.CheckpointError(
      f"{path} holds a JSON {type(value).__name__}, not an object; {fix}"
    )
  return value


def write_json(path, value):
  """Writes `value` as JSON through a temporary file renamed over `path`, so that
  a crash or a reader never sees half a file."""
  files.write_text(path, json.dumps(value, indent=2))


def has_config(workdir):
  return (pathlib.Path(workdir) / CONFIG).is_file()


def read_config(workdir):
  """The ConfigDict a train.py run saved in workdir/config.json."""
  path = pathlib.Path(workdir) / CONFIG
  if not path.is_file():
    raise errors.CheckpointError(
      f"{path} not found: --workdir must be a folder written by train.py"
    )
  return ml_collections.ConfigDict(
    read_json(path, "train.py writes it when a run starts: use another --workdir")
  )


def write_config(workdir, config):
  write_json(pathlib.Path(workdir) / CONFIG, json.loads(config.to_json_best_effort()))


def checkpoint_steps(workdir, bits):
  directory = checkpoints_dir(workdir, bits)
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


@dataclasses.dataclass
class Saved:
  """What evaluation and inference read of one checkpoint (`read_checkpoint`).

  variables: {'params', 'batch_stats'} as NumPy arrays in their saved dtypes,
    each {'visual': ...} only, or every part with whole=True; 'batch_stats' is
    {} for backbones without BatchNorm.
  database_codes: the learned (N, bits) database codes, or None when not read.
  step: the checkpoint's step, which is the outer iteration it was saved after.
  """

  config: ml_collections.ConfigDict
  bits: int
  step: int
  variables: dict
  database_codes: Any


def read_checkpoint(workdir, bits=None, step=None, *, whole=False, database_codes=False):
  """The Saved of a run's checkpoint: `bits` default the run's only code length,
  `step` default the newest that reads back. Nothing in the run folder is written."""
  workdir = pathlib.Path(workdir)
  config = read_config(workdir)
  lengths = tuple(config.code_lengths)
  if bits is None:
    if len(lengths) != 1:
      raise errors.CheckpointError(
        f"{workdir} trained code lengths {lengths}: choose one with --bits."
      )
    bits = lengths[0]
  directory = checkpoints_dir(workdir, bits)
  steps = checkpoint_steps(workdir, bits)
  if not steps:
    trained = [b for b in lengths if checkpoint_steps(workdir, b)]
    raise errors.CheckpointError(
      f"{directory}: no checkpoint of {bits}-bit codes; this run has checkpoints for "
      f"{trained or 'no code length yet'}: choose one with --bits, or train it first."
    )
  if step is not None and step not in steps:
    raise errors.CheckpointError(f"{directory}: no checkpoint {step}; there are {steps}.")
  checkpoints = Checkpoints(workdir, bits, read_only=True)
  try:
    return checkpoints.read(config, bits, step, whole=whole, database_codes=database_codes)
  finally:
    checkpoints.close()


def _read_state(state_dir, config, bits, whole, database_codes):
  """(variables, database codes or None) of the TrainState saved in `state_dir`,
  read partially; the parameters' shapes are checked against the model of
  `config` first, naming the leaves that differ."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(state_dir).tree
    # Unreadable metadata is damage (Checkpoints reads an older step instead); a
    # readable tree without SCHN's parts is no training checkpoint at all.
    try:
      saved = {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}
      if not whole:
        saved = {k: {"visual": v["visual"]} if "visual" in v else {} for k, v in saved.items()}
      channels = input_channels(saved["params"]["visual"]["backbone"])
      num_classes = (
        saved["params"]["semantic"]["mlp"]["net_0"]["kernel"].shape[0] if whole else None
      )
      if database_codes:
        saved["database_codes"] = tree["database_codes"]
    except (KeyError, TypeError) as error:
      raise errors.CheckpointError(
        f"{state_dir}: not a training checkpoint with SCHN parameters "
        f"({type(error).__name__}: {error})."
      ) from None
    template = variables_template(config, bits, channels, num_classes)
    # Named as in model files: parameters at the top, running statistics under batch_stats/.
    flat_template, flat_saved = (
      traverse_util.flatten_dict(
        {**v["params"], "batch_stats": v.get("batch_stats") or {}}, sep="/"
      )
      for v in (template, saved)
    )
    shape = lambda flat, key: tuple(flat[key].shape) if key in flat else None
    differ = sorted(
      f"{key} (config {shape(flat_template, key)}, checkpoint {shape(flat_saved, key)})"
      for key in flat_template.keys() | flat_saved.keys()
      if shape(flat_template, key) != shape(flat_saved, key)
    )
    if differ:
      raise errors.CheckpointError(
        f"{state_dir}: the checkpoint does not fit the run's config.json: "
        + ", ".join(differ[:5])
        + (" ..." if len(differ) > 5 else "")
      )
    # The saved dtypes (float64 runs exist); TrainedModel casts to float32.
    target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), {k: v for k, v in saved.items() if v}
    )
    restore_args = jax.tree_util.tree_map(
      lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), target
    )
    restored = handler.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )
  finally:
    handler.close()
  variables = {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}
  return variables, restored.get("database_codes")


def _brief(error):
  """The first line of an orbax/TensorStore error, without the spec dump it carries."""
  text = str(error).split(" See full TensorStore details", 1)[0]
  line = next((part.strip() for part in text.splitlines() if part.strip()), "")
  return f"{type(error).__name__}: {line[:300]}"


def _ignore_closed_event_loop_callbacks():
  """Drops the 'Event loop is closed' tracebacks a failed restore leaves behind.

  Orbax restores in an asyncio loop that it closes when a read fails; the
  TensorStore reads still in flight then call back into the closed loop, and
  each callback prints a traceback (harmless: nothing waits for them any more).
  Every other unraisable exception still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_event_loop", False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
      previous(unraisable)

  hook.ignores_closed_event_loop = True
  sys.unraisablehook = hook


def _without_batch_stats(state_dir, target):
  """The restore target, as a dict of its fields, for a checkpoint written before the
  training state held BatchNorm statistics; None for any other. Runs from then have
  no BatchNorm (their batch_stats is empty), so nothing of theirs is lost."""
  if target.batch_stats:
    return None
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(state_dir).tree
  finally:
    handler.close()
  if "batch_stats" in saved:
    return None
  return {f.name: getattr(target, f.name) for f in dataclasses.fields(target) if f.name in saved}


class Checkpoints:
  """One code length's orbax checkpoints (training state + JSON metadata), saved
  every `every` outer iterations and on demand; read back whole (`restore`) or
  in part (`read`), newest readable first.

  Attributes:
    directory: workdir/bits_<bits>/checkpoints.
    damaged: steps that a read skipped because they cannot be read.
  """

  def __init__(self, workdir, bits, every=1, *, keep=2, read_only=False):
    # Orbax takes absolute paths only.
    self.directory = checkpoints_dir(workdir, bits).absolute()
    # Outside `directory`, so that orbax never sees what is set aside.
    self.aside = damaged_dir(workdir, bits).absolute()
    self.every = every
    self.damaged = []
    # Read-only managers write nothing: evaluation may run on a run folder it cannot write.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep,
      create=not read_only,
      read_only=read_only,
      save_interval_steps=0 if read_only else 1,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def _newest_readable(self, read, steps=None):
    """(step, read(step)) for the newest of `steps` (default: all) that reads
    back, or None when there is no checkpoint; CheckpointError when there are
    some but none reads. A UserError from `read` (a checkpoint that does not
    fit the config) is raised at once: an older one would not fit either."""
    _ignore_closed_event_loop_callbacks()
    failures = []
    for step in sorted(self.manager.all_steps() if steps is None else steps, reverse=True):
      where = self.directory / str(step)
      try:
        value = read(step)
      except errors.UserError:
        raise
      # Orbax and TensorStore raise many types for unreadable files, the bare
      # Exception included; a checkpoint that cannot be read is skipped alike.
      except Exception as error:
        if isinstance(error, json.JSONDecodeError):
          where = where / "meta"
        failures.append(f"{where}: {_brief(error)}")
        logging.warning(
          "checkpoint %s cannot be read (%s); trying the one before it", where, _brief(error)
        )
        self.damaged.append(step)
        continue
      if self.damaged:
        logging.warning("using the older checkpoint %s instead", where)
      return step, value
    if failures and steps is not None:
      raise errors.CheckpointError(
        f"no checkpoint in {self.directory} can be read ({'; '.join(failures)}): choose "
        "another --step, or leave it out for the newest checkpoint that reads"
      )
    if failures:
      raise errors.CheckpointError(
        f"no checkpoint in {self.directory} can be read ({'; '.join(failures)}). If the "
        "model or config changed since they were written, use another --workdir; if they "
        f"are damaged, delete {self.directory} to train this code length again"
      )
    return None

  def _meta(self, step, restored=None):
    """The JSON metadata saved beside the state (from `restored` when given)."""
    if restored is None:
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if not isinstance(restored["meta"], dict):
      raise ValueError(f"metadata is {type(restored['meta']).__name__}, not a JSON object")
    return restored["meta"]

  def restore(self, abstract_state):
    """(state, metadata) of the newest checkpoint that reads back, or (None, None)
    when there is none."""
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)

    def read(step):
      legacy = _without_batch_stats(self.directory / str(step) / "state", target)
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target if legacy is None else legacy),
          meta=ocp.args.JsonRestore(),
        ),
      )
      state = restored["state"] if legacy is None else target.replace(**restored["state"])
      return state, self._meta(step, restored)

    found = self._newest_readable(read)
    return (None, None) if found is None else found[1]

  def read(self, config, bits, step=None, *, whole=False, database_codes=False):
    """A Saved of the newest readable checkpoint (or of `step`, and that one
    only): the parameters and BatchNorm statistics, and with database_codes=True
    the learned database codes; the optimizer moments are not read."""

    def read_step(number):
      parts = _read_state(
        self.directory / str(number) / "state", config, bits, whole, database_codes
      )
      self._meta(number)  # damaged metadata makes the checkpoint unreadable, as for `restore`
      return parts

    found = self._newest_readable(read_step, None if step is None else [step])
    if found is None:
      raise errors.CheckpointError(f"{self.directory}: no checkpoint of {bits}-bit codes")
    number, parts = found
    return Saved(config, bits, number, *parts)

  def set_aside_damaged(self):
    """Moves the checkpoints `restore` skipped to `aside`, so that the resumed
    run can save its own under the same step numbers."""
    if not self.damaged:
      return
    if jax.process_index() == 0:
      aside = self.aside
      aside.mkdir(exist_ok=True)
      for step in self.damaged:
        target = aside / str(step)
        if target.exists():
          shutil.rmtree(target)
        shutil.move(self.directory / str(step), target)
        logging.warning(
          "moved the unreadable checkpoint %s to %s", self.directory / str(step), target
        )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("schn_jax.set_aside_damaged_checkpoints")
    self.damaged = []
    self.manager.reload()

  def save(self, iteration, state, meta, force=False):
    if force or iteration % self.every == 0:
      self.manager.save(
        iteration,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
      )

  def close(self):
    """Waits for the checkpoint being written in the background, then closes."""
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
