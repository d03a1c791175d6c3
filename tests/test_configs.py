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
