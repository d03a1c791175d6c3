"""Every config loads, documents its command, and refuses wrong keys and types."""

import importlib
import pathlib

import pytest

from schn_jax.models import VARIANTS

CONFIGS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
  if p.stem not in ("__init__", "default")
)


def test_every_dataset_has_a_config():
  assert {"fashion_mnist", "cifar", "nuswide", "flickr25k", "coco", "imagenet100", "tiny"} <= set(
    CONFIGS
  )


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_names_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  assert f"--config=configs/{name}.py" in module.__doc__
  assert config.variant in VARIANTS
  assert all(isinstance(b, int) and b > 0 for b in config.code_lengths)
  assert config.sampling in ("uniform", "cover")


def test_wrong_type_and_unknown_key_are_refused():
  config = importlib.import_module("configs.tiny").get_config()
  with pytest.raises(TypeError):
    config.sample_size = "many"
  config.lock()
  with pytest.raises(AttributeError):
    config.no_such_key = 1


@pytest.mark.parametrize("name", ["cifar", "nuswide", "flickr25k"])
def test_reference_protocol_configs_keep_the_reference_loop(name):
  """The Fashion-MNIST schedule's departures (configs/fashion_mnist.py) stay options there."""
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.sampling == "uniform"
  assert config.database_init == "zeros"
  assert tuple(config.cycle_lr_decay.milestones) == ()
  assert config.optimizer_semantics == "torch18"
  assert config.learning_rate == 4e-5 and config.batch_size == 64
