"""Our side of a fixture: the config, the model and the parameters it was captured with.

Trajectory fixtures may name the backbone (`backbone`, default "alexnet") and the
network's input channels (`num_channels`, default 3) in meta.json; the fixtures made
before those keys existed are AlexNet runs on RGB images.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax import data as data_lib
from schn_jax import interop
from schn_jax.models import SCHN, Discriminator
from schn_jax.parity import fixtures
from schn_jax.parity.fixtures import FixtureFormatError


def fixture_backbone(fixture):
  return str(fixture.meta.get("backbone", "alexnet"))


def fixture_channels(fixture):
  return int(fixture.meta.get("num_channels", 3))


def reference_defaults():
  """configs/default.py of this checkout (the reference's hyper-parameters), loaded from
  its file: configs/ are not a package the library imports, and the parity kit runs
  from a checkout, where its fixtures are."""
  path = fixtures.REPOSITORY_FIXTURES.parent / "configs" / "default.py"
  spec = importlib.util.spec_from_file_location("schn_jax_reference_defaults", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fixture_config(fixture, dtype):
  """The run's config: the reference's defaults (configs/default.py) with the
  fixture's hyper-parameters, dropout and augmentation off, as the fixtures ran."""
  meta = fixture.meta
  config = reference_defaults().base_config("fashion_mnist")
  config.variant = fixture.variant
  config.backbone = fixture_backbone(fixture)
  config.dropout_rate = 0.0
  config.dtype = dtype
  for key, meta_key in (
    ("learning_rate", "lr"),
    ("weight_decay", "weight_decay"),
    ("alpha", "alpha"),
    ("beta", "beta"),
    ("gamma", "gamma"),
  ):
    if meta_key not in meta:
      raise FixtureFormatError(f"{fixture.dir / 'meta.json'}: missing {meta_key!r}")
    config[key] = float(meta[meta_key])
  # Step fixtures were made with torch 2 (fixtures README); trajectories say which.
  config.optimizer_semantics = meta.get("zero_grad", "torch2")
  # Captures of configs that start from label codes say so (the codes depend on the seed).
  config.database_init = meta.get("database_init", "zeros")
  config.seed = int(meta.get("split_seed", config.seed))
  if fixture.kind == "trajectory":
    config.code_lengths = (int(meta["code_length"]),)
    for key, meta_key in (
      ("sample_size", "samples"),
      ("batch_size", "batch"),
      ("max_epoch", "max_epoch"),
      ("max_iter", "max_iter"),
      ("eval_iter", "eval_iter"),
    ):
      config[key] = int(meta[meta_key])
    config.data.image_size = int(meta["image_size"])
    config.data.augment = False
    config.data.test_resize = None
    config.data.num_channels = fixture_channels(fixture)
  return config


def split_packed_attention(state_dict):
  """torch packs an attention's q, k and v projections into one `in_proj_weight` (3E, E)
  when its key and value widths equal the embedding width (the latent attention over
  SmallCNN's 512-wide features); our layout names them separately."""
  unpacked = {}
  for key, value in state_dict.items():
    if key.endswith("in_proj_weight"):
      prefix = key[: -len("in_proj_weight")]
      for name, part in zip(("q", "k", "v"), np.split(np.asarray(value), 3)):
        unpacked[f"{prefix}{name}_proj_weight"] = part
    else:
      unpacked[key] = value
  return unpacked


def build_model(fixture, bits, classes, size):
  """The SCHN module and our parameters (float32) converted from the recipe weights."""
  backbone = fixture_backbone(fixture)
  model = SCHN(fixture.variant, bits, backbone=backbone, dropout_rate=0.0)
  template = jax.eval_shape(
    model.init,
    jax.random.key(0),
    jnp.zeros((2, size, size, fixture_channels(fixture))),
    jnp.zeros((2, classes)),
    jnp.zeros((2, 2)),
  )["params"]
  schn_state, disc_state = fixture.state_dicts()
  params = interop.schn_from_reference(
    split_packed_attention(schn_state),
    template,
    fixture.variant,
    source=f"{fixture.dir} recipe",
    backbone=backbone,
  )
  disc_params = {}
  if disc_state is not None:
    template = jax.eval_shape(
      Discriminator().init, jax.random.key(0), jnp.zeros((1, bits)), jnp.zeros((1, bits))
    )["params"]
    disc_params = interop.discriminator_from_reference(disc_state, template)
  return model, params, disc_params


def input_normalization(num_channels, stored_channels):
  """(mean, std) per input channel of what `data.normalize` makes of uint8 images with
  `stored_channels` for a network of `num_channels`: x -> (x / 255 - mean) / std, read
  off its outputs for black and white images (float64), to 12 decimals."""
  with precision("float64"):
    black, white = (
      np.asarray(
        data_lib.normalize(
          np.full((1, 1, 1, stored_channels), value, np.uint8), num_channels, jnp.float64
        )
      )[0, 0, 0]
      for value in (0, 255)
    )
  std = 1.0 / (white - black)
  return [round(float(m), 12) for m in -black * std], [round(float(s), 12) for s in std]


def cast(tree, dtype):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)


def precision(dtype):
  """64-bit JAX for a float64 run, the default for float32 (restored afterwards)."""
  return jax.enable_x64(dtype == "float64")
