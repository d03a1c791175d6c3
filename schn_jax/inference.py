"""Encoding images with a trained visual network, and a trained run as an object.

    model = TrainedModel.from_workdir('runs/fashion_mnist', bits=32)
    codes = model.encode(images)      # uint8 (n, S, S, C) -> float32 (n, 32) in {-1, 0, +1}
    model.export('model.safetensors')  # one file: weights, config and code length
    model = TrainedModel.from_weights('model.safetensors')

`Encoder` is the one encoding path: sign(U_image) of the dataset-normalised
images, batches split over every device. Training and `eval.py --workdir`
evaluate through it (schn_jax.evaluator), `TrainedModel.encode` encodes arrays
through it, and `retrieval.encode_set` encodes image sets through it.

Restoring reads the run's `config.json` and the visual network's parameters
(and BatchNorm running statistics, for backbones that have them) from the
newest readable orbax checkpoint of `bits_<bits>` (run_folder.read_checkpoint),
and nothing else: no dataset, no pretrained .pth backbone, no torch, no
optimizer moments or learned database codes.
"""

import functools
import json
import pathlib

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from schn_jax import errors, run_folder, sharding
from schn_jax.data import pipeline
from schn_jax.interop import weights
from schn_jax.models import SCHN, variables_template
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


class Encoder:
  """The visual network of `model` with `variables` ({'params', 'batch_stats'};
  'batch_stats' {} for backbones without BatchNorm), replicated on every device.

  num_channels: the data config's num_channels (the channels the network reads;
  None: the images' own).
  """

  def __init__(self, model, num_channels, variables, mesh=None):
    self.model = model
    self.num_channels = num_channels
    self.mesh = mesh or sharding.make_mesh()
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
    self.variables = sharding.replicate(variables, self.mesh)

  @staticmethod
  def rounded_batch_size(batch_size):
    """`batch_size` rounded up to a multiple of the devices (batches are split over them)."""
    return -(-batch_size // jax.device_count()) * jax.device_count()

  def hash(self, images):
    """U_image (n, bits) of this process's uint8 images (n, S, S, C), gathered
    from every process. Several processes each give rows of one global batch,
    as many as their devices divide; a single process may give any n."""
    images = np.asarray(images, np.uint8)
    pad = -len(images) % jax.local_device_count()
    if pad and jax.process_count() > 1:
      raise ValueError(f"{len(images)} rows do not split over {jax.local_device_count()} devices")
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.uint8)])
    (sharded,) = sharding.shard_rows(self.mesh, images)
    out = _hash_batch(self.model, self.num_channels, self.variables, sharded)
    return sharding.to_host(out)[: len(out) - pad]

  def signs(self, batches, count):
    """sign(U_image) as float32 (count, bits) in {-1, 0, +1} (0 only where U_image
    is exactly 0) of the first `count` rows of `batches`: dicts whose 'image'
    holds this process's rows of each global batch, only the last one padded
    (data.RetrievalData.batches, data.pipeline.Loader.batches)."""
    out = [np.sign(self.hash(batch["image"])).astype(np.float32) for batch in batches]
    return np.concatenate(out)[:count] if out else np.zeros((0, self.model.bits), np.float32)


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
    self.image_size = config.data.image_size
    self.channels = int(input_channels(self.params["visual"]["backbone"]))
    self.encoder = Encoder(
      SCHN.from_config(config, bits),
      config.data.num_channels,
      {"params": self.params, "batch_stats": self.batch_stats},
    )

  @classmethod
  def from_workdir(cls, workdir, bits=None, step=None):
    """Restores `bits` (default: the run's only code length) at `step`
    (default: the newest readable checkpoint) from a folder written by train.py."""
    saved = run_folder.read_checkpoint(workdir, bits, step)
    return cls(
      saved.config,
      saved.bits,
      saved.variables["params"],
      batch_stats=saved.variables["batch_stats"],
      step=saved.step,
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

  def _checked(self, images):
    images = np.asarray(images, np.uint8)
    expected = (self.image_size, self.image_size, self.channels)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(
        f"images must be uint8 (n, {', '.join(map(str, expected))}),"
        f" got {images.shape}; see TrainedModel.preprocess."
      )
    return images

  def hash(self, images):
    """U_image, the continuous codes (n, bits) float32, of uint8 images
    (n, image_size, image_size, channels), any n."""
    return self.encoder.hash(self._checked(images))

  def encode(self, images, batch_size=256):
    """sign(U_image) as float32 (n, bits) in {-1, 0, +1}; 0 only where U_image
    is exactly 0. Images as for `hash`, encoded batch_size at a time."""
    images = self._checked(images)
    batch_size = Encoder.rounded_batch_size(batch_size)
    batches = ({"image": images[i : i + batch_size]} for i in range(0, len(images), batch_size))
    return self.encoder.signs(batches, len(images))


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
