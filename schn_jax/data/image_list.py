"""Image-list datasets: a root folder plus list files in the deep-hashing format.

One image per line: `relative/path.jpg 0 1 0 ... 1`, the path relative to the
dataset root (no spaces) followed by one 0/1 flag per label. NUS-WIDE,
MIRFlickr-25K, MS-COCO and ImageNet-100 are distributed this way.

Paths are normalised (`./a/b.jpg` and `a/./b.jpg` are `a/b.jpg`), so two
spellings of one file are one item, and the query/database overlap check sees
them; a path that leads outside the root is refused.
"""

import concurrent.futures
import logging
import os
import pathlib
import posixpath
from typing import Sequence

import numpy as np
from PIL import Image

from schn_jax import errors, files

UNLABELED_MODES = ("drop", "fail", "keep")
CORRUPT_MODES = ("fail", "skip")
# What PIL raises for a file it cannot decode: damaged or truncated data, an
# unknown format, or more pixels than its decompression-bomb guard allows.
UNREADABLE_IMAGE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class CorruptImageError(errors.UserError, OSError):
  """An image file that cannot be decoded."""


def normalize_path(path: str, where: str) -> str:
  """`path` relative to the dataset root in one canonical spelling.

  Raises DataError (naming `where`, the list file and line) for a path that is
  absolute or climbs out of the root with '..'.
  """
  normal = posixpath.normpath(path.replace(os.sep, "/"))
  if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
    raise errors.DataError(
      f"{where}: image path {path!r} leads outside the dataset root; list "
      "files name images relative to data.root: rewrite the path, or point "
      "data.root at a folder that holds it"
    )
  return normal


def to_uint8_rgb(image: Image.Image) -> np.ndarray:
  """A PIL image as uint8 (H, W, 3).

  16-bit grayscale ('I;16*', or 'I' as older Pillow opens 16-bit PNGs) is
  scaled to 8 bits; PIL's convert('RGB') would clip it, and nearly every pixel
  would turn white.
  """
  if image.mode.startswith("I;16") or image.mode == "I":
    pixels = np.asarray(image, np.float64)
    # 'I' holds 32-bit integers; PNG and TIFF store at most 16 bits per sample.
    pixels = np.clip(pixels, 0, 65535) * (255 / 65535)
    gray = np.rint(pixels).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"))


def read_list_file(path: pathlib.Path, num_classes: int | None):
  """Returns (normalised relative paths, (n, K) float32 labels, 1-based line numbers).

  num_classes=None reads K from the first line; every line must then match it.
  """
  if not path.is_file():
    raise errors.DataNotFoundError(
      f"list file {path} does not exist; put it under data.root or name "
      "the right one with --config.data.<image_list|query_list|"
      "database_list|train_list>"
    )
  paths, flags, line_numbers = [], [], []
  counted_at = ""
  for line_number, line in enumerate(files.read_text(path, "list file").split("\n"), start=1):
    tokens = line.split()
    if not tokens:
      continue
    if num_classes is None:
      num_classes, counted_at = len(tokens) - 1, f" (as on line {line_number})"
    if len(tokens) - 1 != num_classes:
      raise errors.DataError(
        f"{path}:{line_number}: expected an image path and {num_classes} "
        f"label flags{counted_at}, found {len(tokens) - 1} flags (a path "
        "with spaces is read as several tokens)"
      )
    bad = [t for t in tokens[1:] if t not in ("0", "1")]
    if bad:
      raise errors.DataError(f"{path}:{line_number}: label flags must be 0 or 1, found {bad[0]!r}")
    paths.append(normalize_path(tokens[0], f"{path}:{line_number}"))
    flags.append([t == "1" for t in tokens[1:]])
    line_numbers.append(line_number)
  labels = np.array(flags, np.float32).reshape(len(paths), num_classes or 0)
  return paths, labels, line_numbers


class ImageListSource:
  """Images under `root` named by one or more list files.

  An image listed in several files (HashNet's train list is a subset of its
  database list) is one item of the source; `list_indices[file]` maps each
  list's entries, in order, to source indices.

  Attributes:
    num_classes: K, as given, or read from the first list file when None.
    num_unlabeled: lines whose flags are all 0 (dropped or kept, by mode).
    on_corrupt: 'fail' (an undecodable image stops the run when read) or
      'skip' (`find_corrupt` is run before the split is made, and the images
      it finds are left out of the split).
  """

  def __init__(
    self,
    name: str,
    root: str,
    list_files: Sequence[str],
    num_classes: int | None,
    unlabeled: str = "fail",
    on_corrupt: str = "fail",
  ):
    if unlabeled not in UNLABELED_MODES:
      raise errors.ConfigError(f"config.data.unlabeled={unlabeled!r}: use one of {UNLABELED_MODES}")
    if on_corrupt not in CORRUPT_MODES:
      raise errors.ConfigError(f"config.data.on_corrupt={on_corrupt!r}: use one of {CORRUPT_MODES}")
    if not root or not pathlib.Path(root).is_dir():
      raise errors.DataNotFoundError(
        f"{name}: dataset root {root!r} is not a directory; point the "
        "config at it with --config.data.root=PATH (see docs/data.md for "
        "the files expected there)"
      )
    self.name = name
    self.root = pathlib.Path(root)
    self.num_classes = num_classes
    self.on_corrupt = on_corrupt
    self.num_unlabeled = 0
    self.paths = []
    self.list_indices = {}
    index_of, origin, all_labels = {}, {}, []
    for list_file in list_files:
      list_path = self.root / list_file
      paths, labels, line_numbers = read_list_file(list_path, num_classes)
      if num_classes is None:  # the generic image_list dataset: K from the first file
        num_classes = self.num_classes = labels.shape[1]
        if not num_classes:
          raise errors.DataError(
            f"{list_path}: its lines carry no label flags; training needs "
            "one 0/1 flag per label after each image's path"
          )
      unlabeled_rows = np.flatnonzero(labels.sum(1) == 0)
      self.num_unlabeled += len(unlabeled_rows)
      if len(unlabeled_rows) and unlabeled == "fail":
        raise errors.DataError(
          f"{list_path}:{line_numbers[unlabeled_rows[0]]}: image has no "
          f"positive label ({len(unlabeled_rows)} such lines in this file); "
          "set data.unlabeled='drop' to drop them or 'keep' to keep them"
        )
      indices = []
      for row, (path, line_number) in enumerate(zip(paths, line_numbers)):
        if unlabeled == "drop" and not labels[row].any():
          continue
        where = f"{list_path}:{line_number}"
        if path in index_of:
          index = index_of[path]
          if not np.array_equal(all_labels[index], labels[row]):
            raise errors.DataError(
              f"{where}: labels of {path} differ from those at "
              f"{origin[path]}; an image must carry the same labels in "
              "every list"
            )
        else:
          index = index_of[path] = len(self.paths)
          origin[path] = where
          self.paths.append(path)
          all_labels.append(labels[row])
        indices.append(index)
      self.list_indices[list_file] = np.array(indices, np.int64)
    if self.num_unlabeled:
      logging.warning(
        "%s: %d list lines have no positive label (%s)",
        name,
        self.num_unlabeled,
        "dropped" if unlabeled == "drop" else "kept",
      )
    self.labels = np.array(all_labels, np.float32).reshape(-1, num_classes)
    missing = [p for p in self.paths if not os.path.isfile(self.root / p)]
    if missing:
      raise errors.DataNotFoundError(
        f"{name}: {len(missing)} listed images are missing under "
        f"{self.root}, first: {self.root / missing[0]} (listed at "
        f"{origin[missing[0]]}); check data.root, or remove their lines"
      )

  def __len__(self) -> int:
    return len(self.paths)

  def _decode(self, index: int) -> np.ndarray:
    with Image.open(self.root / self.paths[index]) as image:
      return to_uint8_rgb(image)

  def image(self, index: int) -> np.ndarray:
    try:
      return self._decode(index)
    except UNREADABLE_IMAGE as e:
      path = self.root / self.paths[index]
      fix = (
        "set --config.data.on_corrupt='skip' (in a new --workdir) to "
        "leave corrupt images out of the split"
        if self.on_corrupt == "fail"
        else "it was readable when the split was made; restore the file, or "
        "start a new --workdir so that the split leaves it out"
      )
      raise CorruptImageError(f"cannot decode image {path}: {e}; {fix}") from e

  def find_corrupt(self, num_workers: int | None = None) -> np.ndarray:
    """Sorted indices of the images that fail to decode (every image is read)."""

    def readable(index):
      try:
        self._decode(index)
        return True
      except UNREADABLE_IMAGE:
        return False

    with concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
      ok = np.fromiter(pool.map(readable, range(len(self))), bool, len(self))
    corrupt = np.flatnonzero(~ok)
    if len(corrupt):
      logging.warning(
        "%s: %d of %d images cannot be decoded and are left out of the split "
        "(on_corrupt=skip); first: %s",
        self.name,
        len(corrupt),
        len(self),
        ", ".join(str(self.root / self.paths[i]) for i in corrupt[:5]),
      )
    return corrupt
