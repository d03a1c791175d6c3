"""Orbax checkpoints of the training state, one directory per code length."""

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Saves TrainState (+ JSON metadata) every `every` outer iterations and on demand."""

  def __init__(self, directory, every, keep=2):
    self.every = every
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest(self):
    return self.manager.latest_step()

  def restore(self, abstract_state):
    """(state, metadata) of the latest checkpoint, or (None, None) when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None, None
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def save(self, iteration, state, meta, force=False):
    if force or iteration % self.every == 0:
      self.manager.save(iteration, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
