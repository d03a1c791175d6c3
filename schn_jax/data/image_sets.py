"""Sets of images to encode or show: a folder tree, an image-list file, an .npz
of arrays, or a TFDS split.

Each set has `paths` (n,) (where each image came from, relative to the set's
root; `name[i]` for arrays and TFDS), `labels` (n, K) float32 0/1 (K = 0 when
unknown), `label_names` (K names, or None), `image(i)` -> uint8 (H, W, C) with
C = `channels` (1 or 3, the channel count the model reads), and `spec`, a JSON
dict that `open_spec` turns back into the same set: the codes file keeps it,
so that search can show the images behind the codes.

`open_images(location)` picks the kind from the location:
  FOLDER                 every image file below it, sorted by path; with
                         class_folders=True the first folder level names the
                         class (one label per image, as torchvision's ImageFolder);
  LIST.txt               one image per line, `path [0/1 flags...]`, paths
                         relative to `root` (default: the list's folder);
  ARRAYS.npz             `images` uint8 (n, H, W[, C]), optional `labels`
                         (n,) class ids or (n, K) multi-hot, optional `label_names`;
  tfds:NAME:SPLIT        a prepared TFDS split (see docs/data.md), labels one-hot.
"""

import hashlib
import pathlib
import zipfile

import numpy as np
from PIL import Image

from schn_jax import errors
from schn_jax.data import image_list, sources

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")


class ImageSetError(errors.UserError, ValueError):
  """A set of images that cannot be opened or read as given."""


def _convert(image, channels):
  """A PIL image or uint8 array (H, W[, C]) -> uint8 (H, W, channels)."""
  if not isinstance(image, Image.Image):
    array = np.asarray(image, np.uint8)
    if array.ndim == 3 and array.shape[-1] == channels:
      return array
    image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
  if image.mode.startswith("I"):
    # 16- and 32-bit grayscale: scaled to 8 bits, not clipped by convert().
    image = Image.fromarray(image_list.to_uint8_rgb(image))
  array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  return array.reshape(array.shape[:2] + (channels,))


class _ImageSet:
  """What every set shares; subclasses set paths, labels, label_names, spec."""

  channels: int
  paths: np.ndarray
  labels: np.ndarray
  label_names: np.ndarray | None
  spec: dict

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def num_classes(self) -> int:
    """The label count the input pipeline pads batches with (0 when unknown)."""
    return self.labels.shape[1]

  def reads(self, path) -> bool:
    """Whether `path` is a file this set reads (an output must not replace it)."""
    return False

  def fingerprint(self, start: int, stop: int) -> str:
    """A digest that changes when an image of items start..stop-1 changes (the
    set's spec and paths being the same); an interrupted encode compares it."""
    return ""


class _FileImages(_ImageSet):
  """Images stored as files under `root`, decoded on access.

  A file's fingerprint is its size and modification time, as make and rsync
  judge a change. Measured (page cache warm, 300 files each): a stat costs
  0.2% of decoding a 500x375 JPEG and 6% of a 28x28 PNG; a SHA-1 of the file
  7% and 14%, and on a cold disk or network share a second read of every
  image. A file rewritten with the same size and time (`cp -p`) is missed.
  """

  root: pathlib.Path

  def reads(self, path) -> bool:
    path = pathlib.Path(path).resolve()
    root = self.root.resolve()
    if root not in path.parents:
      return False
    if not hasattr(self, "_path_set"):
      self._path_set = set(self.paths.tolist())
    return path.relative_to(root).as_posix() in self._path_set

  def fingerprint(self, start: int, stop: int) -> str:
    digest = hashlib.sha1()
    for path in self.paths[start:stop]:
      try:
        stat = (self.root / path).stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
      except OSError:
        digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()

  def image(self, index: int) -> np.ndarray:
    path = self.root / self.paths[index]
    try:
      with Image.open(path) as image:
        return _convert(image, self.channels)
    except image_list.UNREADABLE_IMAGE as error:
      raise ImageSetError(
        f"cannot read image {path}: {error}; replace or remove the file and run the command again"
      ) from None


class FolderImages(_FileImages):
  """Every image file below `root` (hidden files and folders skipped)."""

  def __init__(self, root, *, class_folders=False, channels=3):
    self.root = pathlib.Path(root).absolute()
    self.channels = channels
    if not self.root.is_dir():
      raise ImageSetError(
        f"{root}: no such folder; give a folder of images, "
        "an image-list file, an .npz of arrays or "
        "tfds:NAME:SPLIT."
      )
    paths = sorted(
      p.relative_to(self.root).as_posix()
      for p in self.root.rglob("*")
      if p.suffix.lower() in IMAGE_SUFFIXES
      and p.is_file()
      and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
    )
    if not paths:
      raise ImageSetError(
        f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below it."
      )
    self.paths = np.array(paths, dtype=str)
    self.spec = {"kind": "folder", "root": str(self.root), "class_folders": bool(class_folders)}
    self.labels = np.zeros((len(paths), 0), np.float32)
    self.label_names = None
    if class_folders:
      loose = [p for p in paths if "/" not in p]
      if loose:
        raise ImageSetError(
          f"{self.root / loose[0]}: with class folders every image must be "
          "in a subfolder named after its class (FOLDER/<class>/image); "
          "move it, or drop --class_folders."
        )
      classes = [p.split("/", 1)[0] for p in paths]
      self.label_names = np.array(sorted(set(classes)), dtype=str)
      ids = np.searchsorted(self.label_names, classes)
      self.labels = sources.one_hot(ids, len(self.label_names))


class ListImages(_FileImages):
  """The images named by a list file: `path [0/1 flags...]` per line.

  The flag count is read from the first line; every line must have as many
  (a wrong line is refused with file:line).
  """

  def __init__(self, list_file, *, root=None, channels=3):
    list_file = pathlib.Path(list_file).absolute()
    if not list_file.is_file():
      raise ImageSetError(f"{list_file}: no such list file.")
    self.root = pathlib.Path(root).absolute() if root else list_file.parent
    self.channels = channels
    if not self.root.is_dir():
      raise ImageSetError(f"{root}: no such folder (the root the list's paths are relative to).")
    paths, labels, line_numbers = image_list.read_list_file(list_file, None)
    if not paths:
      raise ImageSetError(f"{list_file}: no images listed.")
    for path, line in zip(paths, line_numbers):
      if not (self.root / path).is_file():
        raise ImageSetError(
          f"{list_file}:{line}: {self.root / path} does not "
          "exist; fix the path (relative to "
          f"{self.root}) or give --root."
        )
    self.paths = np.array(paths, dtype=str)
    self.labels = labels
    self.label_names = None
    self.spec = {"kind": "list", "list": str(list_file), "root": str(self.root)}
    self.list_file = list_file

  def reads(self, path) -> bool:
    return pathlib.Path(path).resolve() == self.list_file.resolve() or super().reads(path)


class ArrayImages(_ImageSet):
  """Images held in an .npz: `images`, optional `labels` and `label_names`."""

  def __init__(self, path, *, channels=3):
    path = pathlib.Path(path).absolute()
    self.channels = channels
    if not path.is_file():
      raise ImageSetError(f"{path}: no such file.")
    if not zipfile.is_zipfile(path):
      raise ImageSetError(f"{path}: not an .npz file (not a zip archive).")
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
      raise ImageSetError(f"{path}: not a readable .npz file ({error}).") from None
    images = arrays.get("images")
    if images is None:
      raise ImageSetError(
        f"{path}: no `images` array (found {sorted(arrays)});"
        " an image .npz holds images uint8 (n, H, W[, C])."
      )
    if (
      images.dtype != np.uint8
      or images.ndim not in (3, 4)
      or (images.ndim == 4 and images.shape[-1] not in (1, 3))
    ):
      raise ImageSetError(
        f"{path}: images must be uint8 (n, H, W), (n, H, W, "
        f"1) or (n, H, W, 3); got {images.dtype} "
        f"{images.shape}."
      )
    if not len(images) or not images.shape[1] or not images.shape[2]:
      raise ImageSetError(f"{path}: the images array {images.shape} holds no image.")
    self.images = (
      np.stack([_convert(image, channels) for image in images])
      if images.shape[3:] != (channels,)
      else images
    )
    labels = arrays.get("labels")
    names = arrays.get("label_names")
    if labels is None:
      labels = np.zeros((len(images), 0), np.float32)
    elif labels.ndim == 1:
      labels = sources.one_hot(
        _class_ids(path, labels, names), len(names) if names is not None else int(labels.max()) + 1
      )
    elif labels.ndim == 2 and not np.isin(labels, (0, 1)).all():
      raise ImageSetError(
        f"{path}: multi-hot labels (n, K) must be 0 or 1; give class ids (n,) otherwise."
      )
    if len(labels) != len(images) or labels.ndim != 2:
      raise ImageSetError(
        f"{path}: labels has shape {labels.shape}; expected "
        f"({len(images)},) class ids or ({len(images)}, K)."
      )
    if names is not None and names.shape != (labels.shape[1],):
      raise ImageSetError(
        f"{path}: label_names has shape {names.shape}, expected ({labels.shape[1]},)."
      )
    self.labels = labels.astype(np.float32)
    self.label_names = names
    self.paths = np.array([f"{path.name}[{i}]" for i in range(len(images))], dtype=str)
    self.spec = {"kind": "arrays", "path": str(path)}
    self.path = path

  def image(self, index: int) -> np.ndarray:
    return self.images[index]

  def reads(self, path) -> bool:
    return pathlib.Path(path).resolve() == self.path.resolve()

  def fingerprint(self, start: int, stop: int) -> str:
    return hashlib.sha1(np.ascontiguousarray(self.images[start:stop])).hexdigest()


def _class_ids(path, labels, names):
  """Class ids (n,) of an image .npz, checked: integers in [0, K)."""
  if labels.dtype.kind not in "iu" or not len(labels):
    raise ImageSetError(
      f"{path}: labels (n,) must be integer class ids, got {labels.dtype} {labels.shape}."
    )
  num = len(names) if names is not None else None
  bad = np.flatnonzero((labels < 0) | (labels >= (num or np.iinfo(np.int64).max)))
  if len(bad):
    allowed = f"0..{num - 1} (one per label_names entry)" if num else ">= 0"
    raise ImageSetError(
      f"{path}: labels[{bad[0]}] = {labels[bad[0]]}; class ids must be {allowed}. "
      "Give unlabelled images no labels array."
    )
  return labels.astype(np.int64)


class TfdsImages(_ImageSet):
  """One split of a prepared TFDS image-classification dataset."""

  def __init__(self, name, split, *, data_dir=None, channels=3):
    self.channels = channels
    try:
      self._source = sources.TfdsSource(name, data_dir=data_dir, splits=(split,))
    except sources.DatasetNotPreparedError as error:
      raise ImageSetError(str(error)) from None
    self.labels = self._source.labels
    self.label_names = None
    self.paths = np.array([f"{name}/{split}[{i}]" for i in range(len(self._source))], dtype=str)
    self.spec = {"kind": "tfds", "name": name, "split": split, "data_dir": data_dir}

  def image(self, index: int) -> np.ndarray:
    return _convert(self._source.image(index), self.channels)


def open_images(location, *, root=None, class_folders=False, tfds_data_dir=None, channels=3):
  """The image set at `location` (see the module docstring)."""
  location = str(location)
  if location.startswith("tfds:"):
    parts = location.split(":")
    if len(parts) != 3 or not all(parts[1:]):
      raise ImageSetError(
        f"{location}: write a TFDS split as tfds:NAME:SPLIT, e.g. tfds:cifar10:test."
      )
    return TfdsImages(parts[1], parts[2], data_dir=tfds_data_dir, channels=channels)
  path = pathlib.Path(location)
  if path.is_dir():
    return FolderImages(path, class_folders=class_folders, channels=channels)
  if path.suffix == ".npz":
    return ArrayImages(path, channels=channels)
  if path.is_file():
    return ListImages(path, root=root, channels=channels)
  raise ImageSetError(
    f"{location}: no such folder or file; give a folder of "
    "images, an image-list file, an .npz of arrays or "
    "tfds:NAME:SPLIT."
  )


def open_spec(spec, channels=3):
  """The set a `spec` dict (an image set's, kept in codes files) describes."""
  kind = spec.get("kind")
  if kind == "folder":
    return FolderImages(spec["root"], class_folders=spec["class_folders"], channels=channels)
  if kind == "list":
    return ListImages(spec["list"], root=spec["root"], channels=channels)
  if kind == "arrays":
    return ArrayImages(spec["path"], channels=channels)
  if kind == "tfds":
    return TfdsImages(spec["name"], spec["split"], data_dir=spec["data_dir"], channels=channels)
  raise ImageSetError(
    f"unknown image source {spec!r}: the codes file does not say where its images are."
  )
