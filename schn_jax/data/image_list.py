"""Image-list datasets: a root folder plus list files in the deep-hashing format.

One image per line: `relative/path.jpg 0 1 0 ... 1`, the path relative to the
dataset root (no spaces) followed by one 0/1 flag per label. NUS-WIDE,
MIRFlickr-25K, MS-COCO and ImageNet-100 are distributed this way.
"""

import logging
import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

UNLABELED_MODES = ('drop', 'fail', 'keep')
CORRUPT_MODES = ('fail', 'skip')
# What a corrupt image is replaced with under on_corrupt='skip'; the pipeline
# masks it out of every batch it appears in.
_CORRUPT_SUBSTITUTE = np.zeros((8, 8, 3), np.uint8)


class CorruptImageError(OSError):
  pass


def read_list_file(path: pathlib.Path, num_classes: int):
  """Returns (relative paths, (n, K) float32 labels, 1-based line numbers)."""
  if not path.is_file():
    raise FileNotFoundError(f'list file {path} does not exist')
  paths, flags, line_numbers = [], [], []
  with open(path) as f:
    for line_number, line in enumerate(f, start=1):
      tokens = line.split()
      if not tokens:
        continue
      if len(tokens) - 1 != num_classes:
        raise ValueError(
            f'{path}:{line_number}: expected an image path and {num_classes} '
            f'label flags, found {len(tokens) - 1} flags')
      bad = [t for t in tokens[1:] if t not in ('0', '1')]
      if bad:
        raise ValueError(f'{path}:{line_number}: label flags must be 0 or 1, '
                         f'found {bad[0]!r}')
      paths.append(tokens[0])
      flags.append([t == '1' for t in tokens[1:]])
      line_numbers.append(line_number)
  labels = np.array(flags, np.float32).reshape(len(paths), num_classes)
  return paths, labels, line_numbers


class ImageListSource:
  """Images under `root` named by one or more list files.

  An image listed in several files (HashNet's train list is a subset of its
  database list) is one item of the source; `list_indices[file]` maps each
  list's entries, in order, to source indices.

  Attributes:
    num_unlabeled: lines whose flags are all 0 (dropped or kept, by mode).
    corrupt: indices of images that failed to decode under on_corrupt='skip'.
  """

  def __init__(self, name: str, root: str, list_files: Sequence[str],
               num_classes: int, unlabeled: str = 'fail',
               on_corrupt: str = 'fail'):
    if unlabeled not in UNLABELED_MODES:
      raise ValueError(f'unlabeled must be one of {UNLABELED_MODES}, '
                       f'got {unlabeled!r}')
    if on_corrupt not in CORRUPT_MODES:
      raise ValueError(f'on_corrupt must be one of {CORRUPT_MODES}, '
                       f'got {on_corrupt!r}')
    if not root or not pathlib.Path(root).is_dir():
      raise FileNotFoundError(
          f'{name}: dataset root {root!r} is not a directory; point the '
          'config at it with --config.data.root=PATH (see docs/data.md for '
          'the files expected there)')
    self.name = name
    self.root = pathlib.Path(root)
    self.num_classes = num_classes
    self.on_corrupt = on_corrupt
    self.corrupt = set()
    self.num_unlabeled = 0
    self.paths = []
    self.list_indices = {}
    index_of, origin, all_labels = {}, {}, []
    for list_file in list_files:
      list_path = self.root / list_file
      paths, labels, line_numbers = read_list_file(list_path, num_classes)
      unlabeled_rows = np.flatnonzero(labels.sum(1) == 0)
      self.num_unlabeled += len(unlabeled_rows)
      if len(unlabeled_rows) and unlabeled == 'fail':
        raise ValueError(
            f'{list_path}:{line_numbers[unlabeled_rows[0]]}: image has no '
            f'positive label ({len(unlabeled_rows)} such lines in this file); '
            "set data.unlabeled='drop' to drop them or 'keep' to keep them")
      indices = []
      for row, (path, line_number) in enumerate(zip(paths, line_numbers)):
        if unlabeled == 'drop' and not labels[row].any():
          continue
        where = f'{list_path}:{line_number}'
        if path in index_of:
          index = index_of[path]
          if not np.array_equal(all_labels[index], labels[row]):
            raise ValueError(f'{where}: labels of {path} differ from those '
                             f'at {origin[path]}')
        else:
          index = index_of[path] = len(self.paths)
          origin[path] = where
          self.paths.append(path)
          all_labels.append(labels[row])
        indices.append(index)
      self.list_indices[list_file] = np.array(indices, np.int64)
    if self.num_unlabeled:
      logging.warning('%s: %d list lines have no positive label (%s)', name,
                      self.num_unlabeled,
                      'dropped' if unlabeled == 'drop' else 'kept')
    self.labels = np.array(all_labels, np.float32).reshape(-1, num_classes)
    missing = [p for p in self.paths if not os.path.isfile(self.root / p)]
    if missing:
      raise FileNotFoundError(
          f'{name}: {len(missing)} listed images are missing under '
          f'{self.root}, first: {self.root / missing[0]} (listed at '
          f'{origin[missing[0]]})')

  def __len__(self) -> int:
    return len(self.paths)

  def image(self, index: int) -> np.ndarray:
    path = self.root / self.paths[index]
    try:
      with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))
    except (OSError, SyntaxError, ValueError) as e:
      if self.on_corrupt == 'fail':
        raise CorruptImageError(
            f'cannot decode image {path}: {e} (set data.on_corrupt=\'skip\' '
            'to mask corrupt images out and count them)') from e
      # Two threads meeting the same file at once may both log it; the set
      # still counts it once.
      if index not in self.corrupt:
        self.corrupt.add(index)
        logging.warning('%s: skipping corrupt image %s (%s); %d corrupt so '
                        'far', self.name, path, e, len(self.corrupt))
      return _CORRUPT_SUBSTITUTE
