"""Data configs: the protocol defaults of each dataset (docs/data.md).

`configs/<dataset>.py` calls `default_data_config(name)` and overrides what
it needs; every key is documented in docs/data.md.
"""

import ml_collections
from ml_collections import config_dict

from schn_jax import errors

# name -> (number of labels, protocol defaults). 'image_list' is any dataset
# in the list format: the number of labels is read from its list files, and
# the protocol is the user's choice among the built-in ones (docs/data.md).
IMAGE_LISTS = {
  "image_list": (None, dict(protocol="random", num_query=1000, unlabeled="fail")),
  "nuswide": (
    21,
    dict(protocol="per_class", query_per_class=100, train_per_class=500, unlabeled="drop"),
  ),
  "flickr25k": (38, dict(protocol="random", num_query=1000, num_train=5000, unlabeled="keep")),
  "coco": (80, dict(protocol="lists")),
  "imagenet100": (100, dict(protocol="lists")),
}


def is_tfds(name: str) -> bool:
  return name.startswith("tfds:")


def tfds_name(name: str) -> str:
  return name.removeprefix("tfds:")


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """The protocol defaults for `name`.

  Args:
    name: 'fashion_mnist', 'cifar10' (its python archive, downloaded),
      'nuswide', 'flickr25k', 'coco', 'imagenet100', 'tfds:<name>' for any
      TFDS image-classification dataset (CIFAR-10 too: 'tfds:cifar10'), or
      'image_list' for any dataset in the list format (the number of labels
      is read from its list files).
  """
  if not (name in ("fashion_mnist", "cifar10") or is_tfds(name) or name in IMAGE_LISTS):
    raise errors.ConfigError(
      f"unknown dataset {name!r}: use fashion_mnist, cifar10, "
      f"{', '.join(IMAGE_LISTS)} or tfds:<name>"
    )
  # Optional numbers are typed placeholders so that command-line overrides
  # (--config.data.num_train=5000) parse.
  optional_int = lambda: config_dict.placeholder(int)
  optional_str = lambda: config_dict.placeholder(str)
  config = ml_collections.ConfigDict(
    dict(
      name=name,
      root=optional_str(),
      tfds_data_dir=optional_str(),
      tfds_splits=("train", "test"),
      image_size=224,
      augment=True,
      test_resize=256,
      crop_min_scale=0.08,
      num_channels=optional_int(),
      protocol="per_class",
      num_query=optional_int(),
      query_per_class=100,
      num_database=optional_int(),
      num_train=optional_int(),
      train_per_class=optional_int(),
      image_list="images.txt",
      query_list="test.txt",
      database_list="database.txt",
      train_list="train.txt",
      unlabeled="fail",
      on_corrupt="fail",
      num_workers=optional_int(),
      prefetch=2,
    )
  )
  if name == "fashion_mnist":
    # AlexNet's ImageNet weights expect three channels.
    config.num_channels = 3
  if name in IMAGE_LISTS:
    overrides = dict(IMAGE_LISTS[name][1])
    if overrides["protocol"] != "per_class":
      overrides["query_per_class"] = None
    config.update(overrides)
  return config
