"""Retrieval protocols: seeded query / train / database splits (SPEC section 5).

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
what it was computed from, so evaluation reuses exactly the same one.
"""

import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np

SPLIT_FILE = 'split.npz'
PROTOCOLS = ('per_class', 'random', 'lists')


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
      raise ValueError(f'{what}: label {label} has {len(pool)} images left, '
                       f'the protocol draws {per_class} per label')
    pick = rng.choice(pool, per_class, replace=False)
    available[pick] = False
    drawn.append(pick)
  return np.concatenate(drawn)


def _draw(rng, pool, size, what):
  if size > len(pool):
    raise ValueError(f'{what}: asked for {size} images, only {len(pool)} '
                     'available')
  return rng.choice(pool, size, replace=False)


def make_split(config, labels: np.ndarray, seed: int,
               list_indices: dict | None = None) -> Split:
  """Computes the split of `config.protocol` for (N, K) `labels`."""
  if config.protocol not in PROTOCOLS:
    raise ValueError(f'protocol must be one of {PROTOCOLS}, '
                     f'got {config.protocol!r}')
  if config.protocol == 'lists':
    parts = [np.unique(list_indices[config[f'{part}_list']])
             for part in ('query', 'database', 'train')]
    split = Split(*parts)
    check_split(split, len(labels), train_in_database=False)
    if np.intersect1d(split.query, split.train).size:
      raise ValueError(f'{config.query_list} and {config.train_list} share '
                       'images: queries would be trained on')
    return split

  rng = np.random.default_rng(seed)
  everything = np.arange(len(labels))
  if config.protocol == 'per_class':
    query = _draw_per_class(rng, labels, everything, config.query_per_class,
                            'query')
  else:
    query = _draw(rng, everything, config.num_query, 'query')
  database = np.setdiff1d(everything, query)
  if config.num_database is not None:
    database = np.sort(_draw(rng, database, config.num_database, 'database'))
  if config.train_per_class is not None:
    train = _draw_per_class(rng, labels, database, config.train_per_class,
                            'train')
  elif config.num_train is not None:
    train = _draw(rng, database, config.num_train, 'train')
  else:
    train = database
  split = Split(np.sort(query), database, np.sort(train))
  check_split(split, len(labels), train_in_database=True)
  return split


def check_split(split: Split, num_items: int, train_in_database: bool):
  for part, indices in dataclasses.asdict(split).items():
    if len(indices) and (indices.min() < 0 or indices.max() >= num_items):
      raise ValueError(f'{part} indices outside the dataset of {num_items}')
    if len(np.unique(indices)) != len(indices):
      raise ValueError(f'{part} holds an image twice')
  shared = np.intersect1d(split.query, split.database)
  if shared.size:
    raise ValueError(f'query and database share {shared.size} images '
                     f'(first: index {shared[0]})')
  if train_in_database and np.setdiff1d(split.train, split.database).size:
    raise ValueError('train holds images outside the database')


def split_identity(config, labels: np.ndarray, seed: int,
                   dataset: str) -> dict:
  """What a split was computed from: a saved split is reused only if equal."""
  keys = ('protocol', 'num_query', 'query_per_class', 'num_database',
          'num_train', 'train_per_class')
  if config.protocol == 'lists':
    keys = ('protocol', 'query_list', 'database_list', 'train_list')
  return {
      'dataset': dataset,
      'seed': None if config.protocol == 'lists' else seed,
      'num_items': int(labels.shape[0]),
      'num_classes': int(labels.shape[1]),
      'labels_sha1': hashlib.sha1(np.ascontiguousarray(labels)).hexdigest(),
      **{k: config[k] for k in keys},
  }


def save_split(path: pathlib.Path, split: Split, identity: dict):
  # Written to a temporary name and renamed, so a concurrent reader (another
  # host sharing the workdir) never sees half a file.
  tmp = path.with_name(f'{path.name}.tmp{os.getpid()}')
  with open(tmp, 'wb') as f:
    np.savez(f, identity=json.dumps(identity, sort_keys=True),
             **dataclasses.asdict(split))
  os.replace(tmp, path)


def load_split(path: pathlib.Path) -> tuple[Split, dict]:
  with np.load(path) as saved:
    identity = json.loads(str(saved['identity']))
    split = Split(saved['query'], saved['database'], saved['train'])
  return split, identity


def load_or_make_split(workdir, config, labels: np.ndarray, seed: int,
                       dataset: str, list_indices: dict | None = None) -> Split:
  """Loads `workdir/split.npz`, or computes and saves it if absent."""
  path = pathlib.Path(workdir) / SPLIT_FILE
  identity = split_identity(config, labels, seed, dataset)
  if path.exists():
    split, saved_identity = load_split(path)
    differing = sorted(k for k in identity.keys() | saved_identity.keys()
                       if identity.get(k) != saved_identity.get(k))
    if differing:
      details = ', '.join(f'{k}: saved {saved_identity.get(k)!r} != current '
                          f'{identity.get(k)!r}' for k in differing)
      raise ValueError(
          f'{path} was computed for another dataset or protocol ({details}). '
          'Use the config and data it was made with, or a new workdir.')
    check_split(split, len(labels), config.protocol != 'lists')
    return split
  split = make_split(config, labels, seed, list_indices)
  path.parent.mkdir(parents=True, exist_ok=True)
  save_split(path, split, identity)
  return split
