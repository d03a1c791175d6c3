"""Retrieval protocols: seeded query / train / database splits (docs/data.md, "Protocols").

Three kinds of protocol:
  'per_class': `query_per_class` queries drawn for each label in turn, from
     images carrying that label and not drawn yet (CIFAR-10, Fashion-MNIST,
     NUS-WIDE); the database is every other image.
  'random': `num_query` queries drawn uniformly (MIRFlickr-25K).
  'lists': query, database and train given by list files (MS-COCO and
     ImageNet-100 with HashNet's lists).
For the first two, train is drawn from the database, `train_per_class` per
label or `num_train` uniformly (None: the whole database). Query and database
never overlap; a split that breaks this raises.

A split is computed once and saved in the run's workdir (`split.npz`), with
what it was computed from, so evaluation reuses exactly the same one. Images
that cannot be decoded (under on_corrupt='skip') are left out before drawing,
so they are in no part of the split.
"""

import dataclasses
import hashlib
import json
import pathlib
import zipfile

import numpy as np

from schn_jax import errors, files

SPLIT_FILE = "split.npz"
PROTOCOLS = ("per_class", "random", "lists")
# load_or_make_split: load or make and save; load or make, the caller saves
# (after checking the rest of its config); load only.
SPLIT_MODES = ("make", "defer", "load")


@dataclasses.dataclass(frozen=True)
class Split:
  """Sorted int64 source indices of each part."""

  query: np.ndarray
  database: np.ndarray
  train: np.ndarray


def _draw_per_class(rng, labels, candidates, per_class, what):
  """Draws `per_class` images for each label, without replacement overall."""
  available = np.zeros(len(labels), bool)
  available[candidates] = True
  drawn = []
  for label in range(labels.shape[1]):
    pool = np.flatnonzero(available & (labels[:, label] > 0))
    if len(pool) < per_class:
      raise errors.DataError(
        f"{what}: label {label} has {len(pool)} images left, the protocol "
        f"draws {per_class} per label; lower data.{what}_per_class"
      )
    pick = rng.choice(pool, per_class, replace=False)
    available[pick] = False
    drawn.append(pick)
  return np.concatenate(drawn)


def _draw(rng, pool, size, what):
  if size > len(pool):
    raise errors.DataError(
      f"{what}: asked for {size} images, only {len(pool)} available; lower data.num_{what}"
    )
  return rng.choice(pool, size, replace=False)


def make_split(
  config,
  labels: np.ndarray,
  seed: int,
  list_indices: dict | None = None,
  exclude: np.ndarray | None = None,
) -> Split:
  """Computes the split of `config.protocol` for (N, K) `labels`.

  `exclude`: source indices to leave out of every part (corrupt images).
  """
  if config.protocol not in PROTOCOLS:
    raise errors.ConfigError(f"config.data.protocol={config.protocol!r}: use one of {PROTOCOLS}")
  exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude)
  if config.protocol == "lists":
    parts = [
      np.setdiff1d(list_indices[config[f"{part}_list"]], exclude)
      for part in ("query", "database", "train")
    ]
    split = Split(*parts)
    check_split(split, len(labels), train_in_database=False)
    shared = np.intersect1d(split.query, split.train)
    if shared.size:
      raise errors.DataError(
        f"{config.query_list} and {config.train_list} share {shared.size} "
        f"images (first: source index {shared[0]}): queries would be trained "
        "on; remove them from one of the lists"
      )
    return split

  rng = np.random.default_rng(seed)
  everything = np.setdiff1d(np.arange(len(labels)), exclude)
  if config.protocol == "per_class":
    query = _draw_per_class(rng, labels, everything, config.query_per_class, "query")
  else:
    query = _draw(rng, everything, config.num_query, "query")
  database = np.setdiff1d(everything, query)
  if config.num_database is not None:
    database = np.sort(_draw(rng, database, config.num_database, "database"))
  if config.train_per_class is not None:
    train = _draw_per_class(rng, labels, database, config.train_per_class, "train")
  elif config.num_train is not None:
    train = _draw(rng, database, config.num_train, "train")
  else:
    train = database
  split = Split(np.sort(query), database, np.sort(train))
  check_split(split, len(labels), train_in_database=True)
  return split


def check_split(split: Split, num_items: int, train_in_database: bool):
  for part, indices in dataclasses.asdict(split).items():
    if len(indices) and (indices.min() < 0 or indices.max() >= num_items):
      raise errors.DataError(
        f"{part} indices outside the dataset of {num_items}; the split does not fit this data"
      )
    if len(np.unique(indices)) != len(indices):
      raise errors.DataError(f"{part} holds an image twice")
  shared = np.intersect1d(split.query, split.database)
  if shared.size:
    raise errors.DataError(
      f"query and database share {shared.size} images (first: index "
      f"{shared[0]}); a query must not be found in the database: remove it "
      "from one of the lists"
    )
  if train_in_database and np.setdiff1d(split.train, split.database).size:
    raise errors.DataError("train holds images outside the database")


def split_identity(config, labels: np.ndarray, seed: int, dataset: str) -> dict:
  """What a split was computed from: a saved split is reused only if equal."""
  keys = (
    "protocol",
    "num_query",
    "query_per_class",
    "num_database",
    "num_train",
    "train_per_class",
  )
  if config.protocol == "lists":
    keys = ("protocol", "query_list", "database_list", "train_list")
  identity = {
    "dataset": dataset,
    "seed": None if config.protocol == "lists" else seed,
    "num_items": int(labels.shape[0]),
    "num_classes": int(labels.shape[1]),
    "labels_sha1": hashlib.sha1(np.ascontiguousarray(labels)).hexdigest(),
    **{k: config[k] for k in keys},
  }
  # Only when set, so that splits saved before this key existed still match.
  if config.get("on_corrupt") == "skip":
    identity["on_corrupt"] = "skip"
  return identity


def save_split(path: pathlib.Path, split: Split, identity: dict):
  # Written to a temporary name and renamed, so a concurrent reader (another
  # host sharing the workdir) never sees half a file.
  with files.replaced(path) as tmp:
    np.savez(tmp, identity=json.dumps(identity, sort_keys=True), **dataclasses.asdict(split))


def load_split(path: pathlib.Path) -> tuple[Split, dict]:
  try:
    with np.load(path, allow_pickle=False) as saved:
      identity = json.loads(str(saved["identity"]))
      split = Split(saved["query"], saved["database"], saved["train"])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise errors.DataError(
      f"{path} is damaged ({type(e).__name__}: {e}); delete it to draw the "
      "split again (only in a run that has not trained yet), or use a new "
      "--workdir"
    ) from None
  return split, identity


def write_split(workdir, config, labels: np.ndarray, seed: int, dataset: str, split: Split):
  """Saves `split` as `workdir/split.npz` unless one is there already."""
  path = pathlib.Path(workdir) / SPLIT_FILE
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split(path, split, split_identity(config, labels, seed, dataset))


def load_or_make_split(
  workdir,
  config,
  labels: np.ndarray,
  seed: int,
  dataset: str,
  list_indices: dict | None = None,
  find_excluded=None,
  mode: str = "make",
) -> Split:
  """Loads `workdir/split.npz`, or computes it if absent.

  Args:
    find_excluded: None, or a function returning the source indices to leave
      out of a new split (called only when one is made: it may be slow).
    mode: 'make' saves a new split; 'defer' leaves saving to the caller
      (`write_split`); 'load' refuses to make one.
  """
  path = pathlib.Path(workdir) / SPLIT_FILE
  identity = split_identity(config, labels, seed, dataset)
  if not path.exists() and mode == "load":
    raise errors.DataNotFoundError(
      f"{path} not found: the split is written by train.py when a run "
      "starts; give the --workdir of a run"
    )
  if path.exists():
    split, saved_identity = load_split(path)
    differing = sorted(
      k for k in identity.keys() | saved_identity.keys() if identity.get(k) != saved_identity.get(k)
    )
    if differing:
      details = ", ".join(
        f"{k}: saved {saved_identity.get(k)!r} != current {identity.get(k)!r}" for k in differing
      )
      raise errors.DataError(
        f"{path} was computed for another dataset or protocol ({details}). "
        "Use the config and data it was made with, or a new workdir."
      )
    check_split(split, len(labels), config.protocol != "lists")
    return split
  exclude = find_excluded() if find_excluded is not None else None
  split = make_split(config, labels, seed, list_indices, exclude)
  if mode == "make":
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split(path, split, identity)
  return split
