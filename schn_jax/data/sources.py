"""Image sources: random access to uint8 images and multi-hot labels by index.

Every source has `name`, `num_classes`, `labels` ((N, K) float32 0/1, kept in
memory because the training loop builds label similarities from them every
iteration), `__len__` and `image(index) -> uint8 (H, W, C)`. Images keep the
channel count they are stored with (Fashion-MNIST gives C=1); the input
pipeline decides whether to tile them to RGB.

TensorFlow is never imported here: TFDS datasets are read with
`tfds.data_source` over array_record files.
"""

import gzip
import pathlib
import pickle
import tarfile
from typing import Protocol, Sequence

import numpy as np

from schn_jax import download, errors

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
# Short folder names for its ten classes, in label order (written image folders use them).
FASHION_MNIST_CLASSES = (
  "tshirt",
  "trouser",
  "pullover",
  "dress",
  "coat",
  "sandal",
  "shirt",
  "sneaker",
  "bag",
  "boot",
)
FASHION_MNIST_FILES = (
  ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)


class Source(Protocol):
  name: str
  num_classes: int
  labels: np.ndarray  # (N, K) float32, 0/1.

  def __len__(self) -> int: ...

  def image(self, index: int) -> np.ndarray:
    """uint8 (H, W, C)."""
    ...


def one_hot(class_ids: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[np.asarray(class_ids)]


class ArraySource:
  """A dataset held in memory as one uint8 (N, H, W, C) array."""

  def __init__(self, name: str, images: np.ndarray, labels: np.ndarray):
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(
        f"{name}: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}"
      )
    if len(images) != len(labels):
      raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    self.name = name
    self.images = images
    self.labels = np.asarray(labels, np.float32)
    self.num_classes = self.labels.shape[1]

  def __len__(self) -> int:
    return len(self.images)

  def image(self, index: int) -> np.ndarray:
    return self.images[index]


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads a gzipped IDX file (the MNIST format) into a uint8 array."""
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise errors.DataError(
      f"{path}: not a readable gzip file ({e}); download or reinstall it"
    ) from None
  zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype_code != 0x08:
    raise errors.DataError(
      f"{path}: not an unsigned-byte IDX file; point "
      "data.root at the gzipped Fashion-MNIST IDX files"
    )
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise errors.DataError(
      f"{path}: header says {shape} but holds {array.size} "
      "bytes (truncated file?); download or reinstall it"
    )
  return array.reshape(shape)


def fashion_mnist_source(root: str | None = None, tfds_data_dir: str | None = None) -> ArraySource:
  """Fashion-MNIST, train then test (70,000 images, 28x28x1).

  Reads Debian's `dataset-fashion-mnist` IDX files from `root`; where they are
  absent, TFDS's prepared `fashion_mnist`.
  """
  root = pathlib.Path(root or FASHION_MNIST_ROOT)
  paths = [(root / images, root / labels) for images, labels in FASHION_MNIST_FILES]
  if all(images.is_file() and labels.is_file() for images, labels in paths):
    images = np.concatenate([read_idx(images) for images, _ in paths])[..., None]
    class_ids = np.concatenate([read_idx(labels) for _, labels in paths])
    return ArraySource("fashion_mnist", images, one_hot(class_ids, 10))
  try:
    source = TfdsSource("fashion_mnist", data_dir=tfds_data_dir)
  except DatasetNotPreparedError as e:
    raise errors.DataNotFoundError(
      f"Fashion-MNIST not found: no IDX files in {root} (install them with "
      "`apt-get install dataset-fashion-mnist`, or point data.root at a "
      f"folder holding {', '.join(f for p in FASHION_MNIST_FILES for f in p)})"
      f" and TFDS has not prepared it either: {e}"
    ) from None
  images = np.stack([source.image(i) for i in range(len(source))])
  return ArraySource("fashion_mnist", images, source.labels)


# The CIFAR-10 python archive (the checksum its publisher gives) and its batches, in the
# published order: the five training batches, then the test batch.
CIFAR10_ARCHIVE = download.RemoteFile(
  "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"
)
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def cifar10_source(archive) -> ArraySource:
  """CIFAR-10 from its python archive: 60,000 images 32x32x3, train then test.

  The batches are read from the archive as it is (one pass, nothing unpacked on
  disk). They are pickles: `archive` must be the checked file (download.fetch_all).
  """
  batches = {}
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for member in tar:
        name = member.name.rsplit("/", 1)[-1]
        if name in CIFAR10_BATCHES and member.isfile():
          # Pickled by Python 2: byte-string keys.
          batches[name] = pickle.load(tar.extractfile(member), encoding="bytes")
  except (OSError, EOFError, tarfile.TarError, pickle.UnpicklingError) as e:
    raise errors.DataError(
      f"{archive}: not a readable CIFAR-10 python archive ({e}); delete it to download it again"
    ) from None
  missing = [name for name in CIFAR10_BATCHES if name not in batches]
  if missing:
    raise errors.DataError(
      f"{archive}: no {', '.join(missing)} in it; delete it to download it again"
    )
  # Each row is one image, channel-major: 1024 red, 1024 green, 1024 blue bytes.
  rows = np.concatenate([np.asarray(batches[name][b"data"], np.uint8) for name in CIFAR10_BATCHES])
  class_ids = np.concatenate([np.asarray(batches[name][b"labels"]) for name in CIFAR10_BATCHES])
  if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or len(class_ids) != len(rows):
    raise errors.DataError(
      f"{archive}: batches of {rows.shape} pixels and {len(class_ids)} labels, expected "
      "(n, 3072) and n; delete it to download it again"
    )
  images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return ArraySource("cifar10", np.ascontiguousarray(images), one_hot(class_ids, 10))


class DatasetNotPreparedError(errors.DataNotFoundError):
  """A TFDS dataset with no prepared array_record files."""


def prepare_command(name: str, data_dir: str | None) -> str:
  command = f"python -m schn_jax.data.prepare --dataset={name}"
  if data_dir:
    command += f" --data_dir={data_dir}"
  return command


class TfdsSource:
  """A TFDS image-classification dataset, read through `tfds.data_source`.

  The splits in `splits` are concatenated in that order (for cifar10:
  train then test, 60,000 images; TFDS stores each split shuffled, so the
  order differs from `cifar10_source`'s). Images are decoded on each access;
  labels are read once, when the source is opened.
  """

  def __init__(
    self, name: str, data_dir: str | None = None, splits: Sequence[str] = ("train", "test")
  ):
    import tensorflow_datasets as tfds

    self.name = name
    try:
      self._parts = [
        tfds.data_source(name, split=s, data_dir=data_dir, download=False) for s in splits
      ]
    except Exception as e:
      # TFDS reports an unprepared dataset as an unsupported file format (or
      # a missing file): say what is actually wrong and how to fix it.
      try:
        builder = tfds.builder(name, data_dir=data_dir)
      except tfds.core.DatasetNotFoundError as not_found:
        hint = [line.strip() for line in str(not_found).splitlines() if "Did you mean" in line]
        raise errors.DataError(
          f"TFDS has no dataset named {name!r}"
          + (f" ({hint[0]})" if hint else "")
          + "; check the name against the TFDS catalog."
        ) from None
      if builder.is_prepared():
        state = (
          f"is prepared in {builder.data_dir} but tfds.data_source "
          f"cannot read it ({type(e).__name__}: {e}); if it was "
          "prepared as tfrecord, prepare it again in another data_dir"
        )
      else:
        state = f"is not prepared in {builder.data_dir}"
      raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} {state}. Prepare it with: {prepare_command(name, data_dir)}"
      ) from None
    info = self._parts[0].dataset_info
    if not info.supervised_keys:
      raise errors.DataError(
        f"TFDS dataset {name!r} has no (image, label) "
        "supervised keys; it is not an image-classification "
        "dataset"
      )
    self._image_key, self._label_key = info.supervised_keys
    self.num_classes = info.features[self._label_key].num_classes
    self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
    class_ids = [self._example(i)[self._label_key] for i in range(len(self))]
    self.labels = one_hot(np.asarray(class_ids), self.num_classes)

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def _example(self, index: int):
    part = int(np.searchsorted(self._offsets, index, side="right")) - 1
    return self._parts[part][int(index - self._offsets[part])]

  def image(self, index: int) -> np.ndarray:
    image = np.asarray(self._example(index)[self._image_key], np.uint8)
    return image[..., None] if image.ndim == 2 else image
