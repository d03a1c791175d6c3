"""A trained run as an object: restore one code length's visual network, encode images.

    model = TrainedModel.from_workdir('runs/fashion_mnist', bits=32)
    codes = model.encode(images)      # uint8 (n, S, S, C) -> float32 (n, 32) in {-1, 0, +1}
    model.export('model.safetensors')  # one file: weights, config and code length
    model = TrainedModel.from_weights('model.safetensors')

Restoring reads the run's `config.json` and the visual network's parameters
(and BatchNorm running statistics, for backbones that have them) from the
latest orbax checkpoint of `bits_<bits>`, and nothing else: no dataset, no
pretrained .pth backbone, no torch, no optimizer moments or learned database
codes (the checkpoint is read partially). The parameter
template comes from `jax.eval_shape` of the model's init, so a config that
does not match the checkpoint is refused with the leaves that differ.

`encode` computes what training evaluates with (`encode_split`, on a dataset's
split): sign(U_image) of the dataset-normalised images, batches split over
every local device. `evaluate` is the evaluation of a training state, used at
the end of training and by `eval.py --workdir`.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from schn_jax import errors, run_folder, sharding
from schn_jax.data import pipeline
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.evaluation import plots
from schn_jax.interop import weights
from schn_jax.models import SCHN
from schn_jax.models.visual import input_channels

EXPORT_FORMAT = "schn_jax.TrainedModel/1"


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hash_batch(model, num_channels, variables, images):
  # Module and channel setting are static (hashable): one compiled function per
  # model and batch shape, however many batches are encoded. Computed in the
  # parameters' dtype (float64 in parity checks). `variables`: {'params', 'batch_stats'}.
  dtype = jax.tree_util.tree_leaves(variables["params"])[0].dtype
  inputs = pipeline.normalize(images, num_channels, dtype)
  return model.apply(variables, inputs, method=SCHN.encode_images)


def encode_split(model, params, data, indices, batch_size, batch_stats=None):
  """sign(U_image) of a dataset's images at `indices` (test transform), as float32
  {-1, 0, +1}: what training evaluates with and `eval.py --workdir` re-evaluates.
  `batch_stats`: BatchNorm's running statistics, for backbones that have them.

  Batches are split over every device of every host (each host loads its own
  rows); the codes are gathered so that every host returns all of them.
  """
  mesh = sharding.make_mesh()
  # Batches are padded, so rounding up to a multiple of the devices only adds padding.
  batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
  variables = sharding.replicate({"params": params, "batch_stats": batch_stats or {}}, mesh)
  out = []
  for start, batch in zip(
    range(0, len(indices), batch_size), data.batches(indices, batch_size, train=False)
  ):
    n = min(batch_size, len(indices) - start)
    (images,) = sharding.shard_rows(mesh, batch["image"])
    hashes = _hash_batch(model, data.config.num_channels, variables, images)
    out.append(np.sign(sharding.to_host(hashes)[:n]).astype(np.float32))
  return np.concatenate(out)


def evaluate(config, model, state, data, output_dir=None):
  """mAP and curves of a training state: query codes from the visual network;
  database codes learned (the reference) or encoded (config.eval.database_codes).
  With `output_dir`, process 0 writes codes.npz and curves.png there."""
  split = data.split
  batch = config.eval.batch_size
  query_codes = encode_split(model, state.params, data, split.query, batch, state.batch_stats)
  if config.eval.database_codes == "learned":
    database_codes = sharding.to_host(state.database_codes)
  else:
    database_codes = encode_split(
      model, state.params, data, split.database, batch, state.batch_stats
    )
  query_labels, database_labels = data.labels[split.query], data.labels[split.database]
  metrics = metrics_lib.evaluate_codes(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk=config.eval.topk,
    ties=config.eval.ties,
  )
  metrics["database_codes"] = config.eval.database_codes
  if output_dir is not None and jax.process_index() == 0:
    codes_lib.save_codes(
      output_dir / run_folder.CODES, query_codes, database_codes, query_labels, database_labels
    )
    plots.plot_curves(metrics, output_dir / run_folder.CURVES)
  return metrics


class TrainedModel:
  """One code length of a trained SCHN run, for inference.

  Attributes:
    config: the run's ConfigDict (from config.json).
    bits: the code length.
    params: {'visual': ...}, the visual network's parameters (float32).
    batch_stats: {'visual': ...}, its BatchNorm running statistics (float32; {} for
      backbones without BatchNorm).
    step: the checkpoint's outer iteration (None when not known).
    workdir: the run folder (None when not from one).
    weights_file: the model file (None when not from one).
    image_size: side of the square images `encode` takes.
    channels: channels of the images `encode` takes (1 or 3).
  """

  def __init__(
    self, config, bits, params, *, batch_stats=None, step=None, workdir=None, weights_file=None
  ):
    self.config = config
    self.bits = bits
    self.params, self.batch_stats = jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float32), (params, batch_stats or {})
    )
    self.step = step
    self.workdir = workdir
    self.weights_file = weights_file
    self.model = SCHN(
      config.variant, bits, backbone=config.backbone, dropout_rate=config.dropout_rate
    )
    self.image_size = config.data.image_size
    self.channels = int(input_channels(self.params["visual"]["backbone"]))
    self._mesh = sharding.make_mesh()
    self._device_variables = sharding.replicate(
      {"params": self.params, "batch_stats": self.batch_stats}, self._mesh
    )

  @classmethod
  def from_workdir(cls, workdir, bits=None, step=None):
    """Restores `bits` (default: the run's only code length) at `step`
    (default: the latest checkpoint) from a folder written by train.py."""
    config, bits, step, state_dir = run_folder.find_checkpoint(workdir, bits, step)
    variables = restore_variables(config, bits, state_dir)
    return cls(
      config,
      bits,
      variables["params"],
      batch_stats=variables["batch_stats"],
      step=step,
      workdir=pathlib.Path(workdir).absolute(),
    )

  @classmethod
  def from_weights(cls, path):
    """Reads a model file written by `export` (no run folder needed)."""
    arrays, metadata = weights.read_arrays(path)
    if metadata.get("format") != EXPORT_FORMAT:
      raise errors.CheckpointError(
        f"{path}: not a model file written by TrainedModel.export (its "
        f"metadata has format={metadata.get('format')!r})."
      )
    config = ml_collections.ConfigDict(json.loads(metadata["config"]))
    bits = int(metadata["bits"])
    tree = traverse_util.unflatten_dict(arrays, sep="/")
    try:
      channels = int(input_channels(tree["visual"]["backbone"]))
    except (KeyError, TypeError, IndexError):  # refused below, naming what is missing
      channels = 3
    template = variables_template(config, bits, channels)
    loaded = weights.arrays_to_params(
      arrays, file_tree(template["params"], template.get("batch_stats")), str(path)
    )
    batch_stats = loaded.pop("batch_stats", {})
    step = int(metadata["step"]) if metadata.get("step", "None") != "None" else None
    return cls(
      config,
      bits,
      loaded,
      batch_stats=batch_stats,
      step=step,
      weights_file=pathlib.Path(path).absolute(),
    )

  def export(self, path):
    """Writes the visual network, its config and code length as one .safetensors
    or .npz file, for `from_weights` (or any safetensors reader: Flax layout,
    names like visual/backbone/features_0/kernel; BatchNorm's running statistics
    as batch_stats/visual/backbone/bn1/mean)."""
    weights.save_params(
      file_tree(self.params, self.batch_stats),
      path,
      {
        "format": EXPORT_FORMAT,
        "config": self.config.to_json_best_effort(),
        "bits": str(self.bits),
        "step": str(self.step),
      },
    )

  def identity(self):
    """What produced these codes, as JSON-able values (kept in codes files)."""
    return {
      "workdir": str(self.workdir) if self.workdir else None,
      "weights": str(self.weights_file) if self.weights_file else None,
      "bits": self.bits,
      "step": self.step,
      "variant": self.config.variant,
      "dataset": self.config.data.name,
    }

  def preprocess(self, image):
    """One uint8 (H, W, channels) image -> (image_size, image_size, channels):
    the dataset's test transform (resize the shorter side, center crop)."""
    return pipeline.transform(np.asarray(image, np.uint8), None, self.config.data)

  def hash(self, images):
    """U_image, the continuous codes (n, bits) float32, of uint8 images
    (n, image_size, image_size, channels), any n."""
    images = np.asarray(images, np.uint8)
    expected = (self.image_size, self.image_size, self.channels)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(
        f"images must be uint8 (n, {', '.join(map(str, expected))}),"
        f" got {images.shape}; see TrainedModel.preprocess."
      )
    devices = jax.device_count()
    pad = -len(images) % devices
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + expected, np.uint8)])
    (sharded,) = sharding.shard_rows(self._mesh, images)
    out = _hash_batch(self.model, self.config.data.num_channels, self._device_variables, sharded)
    return sharding.to_host(out)[: len(images) - pad]

  def encode(self, images, batch_size=256):
    """sign(U_image) as float32 (n, bits) in {-1, 0, +1}; 0 only where U_image
    is exactly 0. Images as for `hash`, encoded batch_size at a time."""
    batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
    images = np.asarray(images, np.uint8)
    out = [
      np.sign(self.hash(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)


def file_tree(params, batch_stats):
  """What a model file holds: the parameters at the top, BatchNorm's running
  statistics (where the backbone has them) under batch_stats/."""
  return {**params, **({"batch_stats": batch_stats} if batch_stats else {})}


def load(location, bits=None, step=None):
  """A TrainedModel from a run folder (`from_workdir`) or a model file
  (`from_weights`; bits and step must then be None or the file's)."""
  if pathlib.Path(location).is_file():
    model = TrainedModel.from_weights(location)
    for name, wanted, found in (("bits", bits, model.bits), ("step", step, model.step)):
      if wanted is not None and wanted != found:
        raise errors.CheckpointError(
          f"{location} holds the {name}={found} model, not {name}={wanted}."
        )
    return model
  return TrainedModel.from_workdir(location, bits, step)


def variables_template(config, bits, channels, num_classes=None):
  """Shapes and dtypes of SCHN's variables ({'params'} and, for backbones with
  BatchNorm, {'batch_stats'}), computed without computing them: the visual
  network's only ({'visual': ...}) when num_classes is None, else the whole model's."""
  model = SCHN(config.variant, bits, backbone=config.backbone, dropout_rate=config.dropout_rate)
  size = config.data.image_size
  key = jax.random.PRNGKey(0)
  if num_classes is None:
    images = jnp.zeros((1, size, size, channels), jnp.float32)
    # Initialising through encode_images creates the visual network only.
    init = lambda: model.init(key, images, method=SCHN.encode_images)
  else:
    images = jnp.zeros((2, size, size, channels), jnp.float32)
    init = lambda: model.init(key, images, jnp.zeros((2, num_classes)), jnp.ones((2, 2)))
  return jax.eval_shape(init)


def restore_variables(config, bits, state_dir, whole=False):
  """SCHN parameters and BatchNorm running statistics of the TrainState saved in
  `state_dir`, as NumPy arrays: {'params': ..., 'batch_stats': ...}, each
  {'visual': ...} only, or with whole=True every part ({'visual', 'semantic',
  'cycle'}); 'batch_stats' is {} for backbones without BatchNorm. Optimizer moments
  and database codes are not read."""
  # Orbax reads absolute paths only.
  state_dir = pathlib.Path(state_dir).absolute()
  # The handler, not a Checkpointer: it reads the one item without looking for
  # step-level metadata, and restores a subtree (partial_restore).
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(state_dir).tree
    saved = {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}
    if not whole:
      saved = {k: {"visual": v["visual"]} if "visual" in v else {} for k, v in saved.items()}
    channels = input_channels(saved["params"]["visual"]["backbone"])
    num_classes = saved["params"]["semantic"]["mlp"]["net_0"]["kernel"].shape[0] if whole else None
  except (KeyError, TypeError, FileNotFoundError, ValueError) as error:
    handler.close()
    raise errors.CheckpointError(
      f"{state_dir}: not a training checkpoint with SCHN parameters "
      f"({type(error).__name__}: {error})."
    ) from None
  template = variables_template(config, bits, channels, num_classes)
  # Named as in model files: parameters at the top, running statistics under batch_stats/.
  flat_template, flat_saved = (
    traverse_util.flatten_dict(file_tree(v["params"], v.get("batch_stats")), sep="/")
    for v in (template, saved)
  )
  shape = lambda flat, key: tuple(flat[key].shape) if key in flat else None
  differ = sorted(
    f"{key} (config {shape(flat_template, key)}, checkpoint {shape(flat_saved, key)})"
    for key in flat_template.keys() | flat_saved.keys()
    if shape(flat_template, key) != shape(flat_saved, key)
  )
  if differ:
    handler.close()
    raise errors.CheckpointError(
      f"{state_dir}: the checkpoint does not fit the run's config.json: "
      + ", ".join(differ[:5])
      + (" ..." if len(differ) > 5 else "")
    )
  # The saved dtypes (float64 runs exist); TrainedModel casts to float32.
  target = {
    k: jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), v)
    for k, v in saved.items()
    if v
  }
  restore_args = jax.tree_util.tree_map(
    lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), target
  )
  try:
    restored = handler.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )
  finally:
    handler.close()
  return {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}


def restore_params(config, bits, state_dir, whole=False):
  """The 'params' of `restore_variables`."""
  return restore_variables(config, bits, state_dir, whole)["params"]
