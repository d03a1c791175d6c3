"""The run folder train.py writes: the one place that knows its layout.

    WORKDIR/config.json                          the run's config (read_config, write_config)
    WORKDIR/split.npz                            the data split (data.protocols.SPLIT_FILE)
    WORKDIR/metrics.json                         final metrics, by code length
    WORKDIR/tensorboard/                         TensorBoard events
    WORKDIR/bits_<c>/checkpoints/<step>/         orbax checkpoints: state/ and meta/
    WORKDIR/bits_<c>/damaged_checkpoints/<step>/ unreadable checkpoints set aside
    WORKDIR/bits_<c>/codes.npz, curves.png       the final evaluation's codes and curves
    WORKDIR/bits_<c>/eval/                       eval.py --workdir's output

Training (training.train, training.checkpoint), evaluation (eval.py) and
inference (inference.TrainedModel) find every file through this module, and
read config.json and metrics.json through `read_json`, so a damaged file gives
the same one-line error wherever it is met.
"""

import json
import pathlib

import ml_collections
import orbax.checkpoint as ocp

from schn_jax import errors, files

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


def find_checkpoint(workdir, bits=None, step=None):
  """(config, bits, step, state folder) of a run's checkpoint: `bits` default
  the run's only code length, `step` default the latest."""
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
      f"{directory}: no checkpoint of {bits}-bit codes; this run has "
      f"checkpoints for {trained or 'no code length yet'}: choose one with "
      "--bits, or train it first."
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise errors.CheckpointError(f"{directory}: no checkpoint {step}; there are {steps}.")
  return config, bits, step, directory / str(step) / "state"
