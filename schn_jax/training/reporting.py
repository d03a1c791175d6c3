"""Metrics to TensorBoard event files (tensorboardX: no TensorFlow), the log and JSON files."""

import jax
import tensorboardX
import tqdm


class MetricWriter:
  """Scalars to `logdir` and one console line per call, from process 0 only."""

  def __init__(self, logdir):
    self._writer = tensorboardX.SummaryWriter(logdir) if jax.process_index() == 0 else None

  def write_scalars(self, step, scalars):
    if self._writer is not None:
      # tqdm.write keeps the line above the live progress bar.
      tqdm.tqdm.write(f"[{step}] " + ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))
      for name, value in scalars.items():
        self._writer.add_scalar(name, value, step)

  def close(self):
    if self._writer is not None:
      self._writer.close()
