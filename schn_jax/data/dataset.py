"""The data layer's entry point: source + saved split + batch loader."""

import dataclasses
import logging
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax import download, errors
from schn_jax.data import config as config_lib
from schn_jax.data import image_list, pipeline, protocols, sources


def remote_files(config) -> list:
  """The files the source of `config` downloads (schn_jax.download), if any."""
  return [sources.CIFAR10_ARCHIVE] if config.name == "cifar10" else []


def open_source(config):
  """The source named by `config.name` (see default_data_config)."""
  name = config.name
  if name == "fashion_mnist":
    return sources.fashion_mnist_source(config.root, config.tfds_data_dir)
  if name == "cifar10":
    (archive,) = download.fetch_all(remote_files(config))
    return sources.cifar10_source(archive)
  if config_lib.is_tfds(name):
    return sources.TfdsSource(
      config_lib.tfds_name(name), data_dir=config.tfds_data_dir, splits=tuple(config.tfds_splits)
    )
  if name in config_lib.IMAGE_LISTS:
    num_classes, _ = config_lib.IMAGE_LISTS[name]
    list_files = (
      (config.query_list, config.database_list, config.train_list)
      if config.protocol == "lists"
      else (config.image_list,)
    )
    return image_list.ImageListSource(
      name,
      config.root,
      list_files,
      num_classes,
      unlabeled=config.unlabeled,
      on_corrupt=config.on_corrupt,
    )
  raise errors.ConfigError(
    f"config.data.name={name!r}: unknown dataset; use "
    f"fashion_mnist, cifar10, {', '.join(config_lib.IMAGE_LISTS)} "
    "or tfds:<name>"
  )


@dataclasses.dataclass
class RetrievalData:
  """A dataset under its retrieval protocol.

  Attributes:
    config: the data config it was built from.
    source: images and (N, K) labels by index.
    split: query / database / train source indices.
    loader: the parallel batch loader.
    seed: the seed the split was drawn with.
  """

  config: object
  source: object
  split: protocols.Split
  loader: pipeline.Loader
  seed: int | None = None

  @property
  def labels(self) -> np.ndarray:
    return self.source.labels

  def batches(
    self,
    indices: np.ndarray,
    batch_size: int,
    *,
    train: bool,
    seed: int | Sequence[int] | None = None,
  ) -> Iterator[dict]:
    """This host's uint8 batches of `indices`; see `pipeline.Loader.batches`."""
    return self.loader.batches(indices, batch_size, train=train, seed=seed)

  def normalize(self, images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 NHWC -> `dtype` NHWC model input (jittable)."""
    return pipeline.normalize(images, self.config.num_channels, dtype)

  def write_split(self, workdir: str):
    """Saves the split as `workdir/split.npz`, unless one is there already."""
    protocols.write_split(
      workdir, self.config, self.labels, self.seed, self.config.name, self.split
    )


def build_dataset(config, workdir: str, seed: int, split_mode: str = "make") -> RetrievalData:
  """Opens the dataset and loads (or computes and saves) its split.

  Args:
    config: a data config, `default_data_config(name)` with overrides.
    workdir: the run's folder; the split lives in `workdir/split.npz`.
    seed: the split's seed (list protocols do not use it).
    split_mode: 'make' saves a new split; 'defer' leaves that to
      `RetrievalData.write_split`, so that a caller can check the rest of
      its config before writing anything; 'load' needs a saved split.
  """
  source = open_source(config)
  find_corrupt = None
  if config.get("on_corrupt") == "skip" and hasattr(source, "find_corrupt"):
    # Decodes every image once, only when a split is made; the split then
    # leaves the corrupt ones out of training, codes and metrics alike.
    find_corrupt = lambda: source.find_corrupt(config.num_workers)
  split = protocols.load_or_make_split(
    workdir,
    config,
    source.labels,
    seed,
    config.name,
    getattr(source, "list_indices", None),
    find_corrupt,
    split_mode,
  )
  logging.info(
    "%s: %d images, %d labels; query %d, database %d, train %d",
    config.name,
    len(source),
    source.num_classes,
    len(split.query),
    len(split.database),
    len(split.train),
  )
  return RetrievalData(config, source, split, pipeline.Loader(source, config), seed)
