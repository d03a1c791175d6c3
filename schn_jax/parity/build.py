"""Our side of a fixture: the config, the model and the parameters it was captured with."""

import jax
import jax.numpy as jnp

from configs import default as default_config
from schn_jax import interop
from schn_jax.models import SCHN, Discriminator
from schn_jax.parity.fixtures import FixtureFormatError


def fixture_config(fixture, dtype):
  """The run's config: the reference's defaults (configs/default.py) with the
  fixture's hyper-parameters, dropout and augmentation off, as the fixtures ran."""
  meta = fixture.meta
  config = default_config.base_config("fashion_mnist")
  config.variant = fixture.variant
  config.backbone = "alexnet"
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
    config.data.num_channels = 3
  return config


def build_model(fixture, bits, classes, size):
  """The SCHN module and our parameters (float32) converted from the recipe weights."""
  model = SCHN(fixture.variant, bits, backbone="alexnet", dropout_rate=0.0)
  template = jax.eval_shape(
    model.init,
    jax.random.key(0),
    jnp.zeros((2, size, size, 3)),
    jnp.zeros((2, classes)),
    jnp.zeros((2, 2)),
  )["params"]
  schn_state, disc_state = fixture.state_dicts()
  params = interop.schn_from_reference(
    schn_state, template, fixture.variant, source=f"{fixture.dir} recipe"
  )
  disc_params = {}
  if disc_state is not None:
    template = jax.eval_shape(
      Discriminator().init, jax.random.key(0), jnp.zeros((1, bits)), jnp.zeros((1, bits))
    )["params"]
    disc_params = interop.discriminator_from_reference(disc_state, template)
  return model, params, disc_params


def cast(tree, dtype):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)


def precision(dtype):
  """64-bit JAX for a float64 run, the default for float32 (restored afterwards)."""
  return jax.enable_x64(dtype == "float64")
