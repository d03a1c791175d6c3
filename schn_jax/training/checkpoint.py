"""Orbax checkpoints of the training state, one directory per code length.

A checkpoint that cannot be read back (a disk error, a file damaged by hand)
is skipped with a warning, and the run resumes from the newest older one that
reads; only when none does is the restore refused, naming the folder.
"""

import dataclasses
import json
import logging
import pathlib
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from schn_jax import errors


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
  """Saves TrainState (+ JSON metadata) every `every` outer iterations and on demand.

  Attributes:
    damaged: steps that `restore` skipped because they cannot be read.
  """

  def __init__(self, directory, every, *, aside, keep=2, read_only=False):
    """directory: the checkpoints' folder; aside: where `set_aside_damaged` moves
    unreadable ones (outside `directory`, so that orbax never sees them)."""
    self.directory = pathlib.Path(directory)
    self.aside = pathlib.Path(aside)
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

  def restore(self, abstract_state):
    """(state, metadata) of the newest checkpoint that reads back, or (None, None)
    when there is none; CheckpointError when there are some but none reads."""
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    _ignore_closed_event_loop_callbacks()
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      where = self.directory / str(step)
      try:
        legacy = _without_batch_stats(where / "state", target)
        restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target if legacy is None else legacy),
            meta=ocp.args.JsonRestore(),
          ),
        )
        state = restored["state"] if legacy is None else target.replace(**restored["state"])
        meta = restored["meta"]
        if not isinstance(meta, dict):
          raise ValueError(f"metadata is {type(meta).__name__}, not a JSON object")
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
        logging.warning("using the older checkpoint %s instead", self.directory / str(step))
      return state, meta
    if failures:
      raise errors.CheckpointError(
        f"no checkpoint in {self.directory} can be read ({'; '.join(failures)}). If the "
        "model or config changed since they were written, use another --workdir; if they "
        f"are damaged, delete {self.directory} to train this code length again"
      )
    return None, None

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
