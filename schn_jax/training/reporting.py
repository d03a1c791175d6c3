"""Metrics to TensorBoard event files (tensorboardX: no TensorFlow), the log and JSON files."""

import json
import pathlib

import jax
import tensorboardX
import tqdm

from schn_jax import errors, files


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


def write_json(path, value):
  """Writes `value` as JSON to a temporary file renamed over `path`, so that a
  crash or a reader never sees half a file."""
  files.write_text(path, json.dumps(value, indent=2))


def read_json(path, fix):
  """The JSON object in `path`; a damaged or non-object file raises a UserError
  naming it, followed by `fix` (what the user should do)."""
  path = pathlib.Path(path)
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.UserError(f"{path} is not valid JSON ({e}); {fix}") from None
  if not isinstance(value, dict):
    raise errors.UserError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
  return value
