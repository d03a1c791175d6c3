"""Binary codes: validation, bit packing, and the code file formats.

Codes hold values in {-1, +1}, or 0 for database rows the reference never
updated (it starts the database codes at zero and only fills the rows it
samples). Labels are multi-hot 0/1 rows; two items are relevant to each other
when they share a label.
"""

import dataclasses
import json
import pathlib
import zipfile

import numpy as np

from schn_jax import errors, files

CODE_KEYS = ("query_codes", "database_codes", "query_labels", "database_labels")


class CodesError(errors.UserError, ValueError):
  """A code or label array that cannot be evaluated, with the fix in words."""


def check_codes(codes, name):
  """Returns `codes` as an int8 (n, bits) array, or raises CodesError."""
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
    raise CodesError(
      f"{name}: expected a non-empty 2-D array (items, bits), got shape {codes.shape}."
    )
  if codes.dtype == bool:
    raise CodesError(
      f"{name}: boolean codes; codes here are -1 and +1 (0 marks "
      "an unset bit), so convert them with np.where(codes, 1, -1)."
    )
  if not np.isin(codes, (-1, 0, 1)).all():
    bad = codes[~np.isin(codes, (-1, 0, 1))].ravel()[:3]
    raise CodesError(
      f"{name}: codes must be -1, +1 (or 0 for unset database "
      f"rows); found {bad.tolist()}. Binarise with np.sign "
      "before saving."
    )
  if (codes == 1).any() and (codes == 0).any() and not (codes == -1).any():
    # Read as they are, every 0 would be an unset bit: a silently wrong mAP.
    raise CodesError(
      f"{name}: codes hold only 0 and 1, which looks like {{0, 1}} "
      "bits; codes here are -1 and +1 (0 marks an unset bit), so "
      "convert them with 2 * codes - 1."
    )
  return codes.astype(np.int8)


def check_labels(labels, name):
  """Returns `labels` as a uint8 (n, classes) 0/1 array, or raises CodesError."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[1] == 0:
    raise CodesError(
      f"{name}: expected a 2-D multi-hot array (items, classes),"
      f" got shape {labels.shape}. Convert class indices to "
      "one-hot rows first."
    )
  if not np.isin(labels, (0, 1)).all():
    raise CodesError(f"{name}: labels must be multi-hot 0/1.")
  return labels.astype(np.uint8)


def check_retrieval_set(
  query_codes, database_codes, query_labels, database_labels, source="arrays"
):
  """Validates the four arrays together; returns them normalised.

  Query codes may contain 0 too (torch.sign of an exact zero), and both
  sides are treated alike.
  """
  query_codes = check_codes(query_codes, f"{source}: query_codes")
  database_codes = check_codes(database_codes, f"{source}: database_codes")
  query_labels = check_labels(query_labels, f"{source}: query_labels")
  database_labels = check_labels(database_labels, f"{source}: database_labels")
  if query_codes.shape[1] != database_codes.shape[1]:
    raise CodesError(
      f"{source}: query_codes have {query_codes.shape[1]} bits but "
      f"database_codes have {database_codes.shape[1]}; both must come from "
      "the same hash layer."
    )
  for codes, labels, side in (
    (query_codes, query_labels, "query"),
    (database_codes, database_labels, "database"),
  ):
    if codes.shape[0] != labels.shape[0]:
      raise CodesError(
        f"{source}: {side}_codes has {codes.shape[0]} rows but "
        f"{side}_labels has {labels.shape[0]}; they must be row-aligned."
      )
  if query_labels.shape[1] != database_labels.shape[1]:
    raise CodesError(
      f"{source}: query_labels have {query_labels.shape[1]} classes but "
      f"database_labels have {database_labels.shape[1]}; use one class "
      "vocabulary for both."
    )
  return query_codes, database_codes, query_labels, database_labels


def pack_bits(bits):
  """Packs a boolean (n, c) array into uint32 words (n, ceil(c / 32)).

  Bit j of a row lands in word j // 32; pad bits are 0 on every row, so they
  never contribute to a popcount of xor or and.
  """
  bits = np.asarray(bits, dtype=bool)
  num_words = -(-bits.shape[1] // 32)
  padded = np.zeros((bits.shape[0], num_words * 32), dtype=bool)
  padded[:, : bits.shape[1]] = bits
  packed = np.packbits(padded, axis=1, bitorder="little")
  return packed.view("<u4").astype(np.uint32)


def pack_codes(codes):
  """Returns (signs, nonzero) uint32 word planes of int8 codes (n, c).

  A zero code bit is 'unset': its nonzero bit is 0, and Hamming distance
  counts it as half a bit against anything (see hamming.py).
  """
  return pack_bits(codes > 0), pack_bits(codes != 0)


def save_codes(path, query_codes, database_codes, query_labels, database_labels):
  """Writes the four arrays to a compressed npz that `load_codes` reads."""
  arrays = check_retrieval_set(query_codes, database_codes, query_labels, database_labels)
  with files.replaced(path) as tmp:
    np.savez_compressed(tmp, **dict(zip(CODE_KEYS, arrays)))


def load_codes(path):
  """Reads a code npz into a dict of validated arrays keyed by CODE_KEYS."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CodesError(f"{path}: no such file.")
  try:
    data = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
    raise CodesError(
      f"{path}: not an .npz file ({error}); a code file is an "
      f".npz holding {list(CODE_KEYS)} (see docs/evaluation.md)."
    ) from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise CodesError(
      f"{path}: a single .npy array, not an .npz; a code file "
      f"holds {list(CODE_KEYS)} (see docs/evaluation.md)."
    )
  with data:
    missing = [key for key in CODE_KEYS if key not in data.files]
    if missing:
      raise CodesError(
        f"{path}: missing key(s) {missing}; found {sorted(data.files)}. A "
        f"code file needs {list(CODE_KEYS)} (see docs/evaluation.md)."
      )
    try:
      arrays = [data[key] for key in CODE_KEYS]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
      raise CodesError(f"{path}: damaged .npz ({error}); write it again.") from None
  return dict(zip(CODE_KEYS, check_retrieval_set(*arrays, source=str(path))))


def load_torch_codes(query_codes, database_codes, query_labels, database_labels):
  """Reads four tensors saved with torch.save (the reference's `.t` files).

  Each path holds one tensor (or a numpy array); labels may be multi-hot or
  one-hot. torch is optional, so it is imported only here.
  """
  try:
    import torch
  except ImportError as error:
    raise CodesError(
      "Reading .t files needs torch (pip install torch); or convert them to a code npz elsewhere."
    ) from error
  arrays = []
  for key, path in zip(CODE_KEYS, (query_codes, database_codes, query_labels, database_labels)):
    if not pathlib.Path(path).is_file():
      raise CodesError(f"{path} ({key}): no such file.")
    value = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(value, torch.Tensor):
      value = value.detach().numpy()
    arrays.append(np.asarray(value))
  return dict(zip(CODE_KEYS, check_retrieval_set(*arrays, source=".t files")))


# ------------------------------------------------ item code files (encode / search)

ITEM_KEYS = ("codes", "packed", "paths")


@dataclasses.dataclass
class ItemCodes:
  """One set of encoded items, as `python -m schn_jax.encode` writes it.

  Attributes:
    codes: float32 (n, bits) in {-1, +1}.
    packed: uint8 (n, ceil(bits / 8)), bit j of a row in byte j // 8, least
      significant bit first, 1 for +1: FAISS's binary layout.
    paths: (n,) str: where each item came from, relative to the source's root
      (or `name[index]` for arrays and TFDS splits).
    labels: optional (n, K) uint8 multi-hot labels.
    label_names: optional (K,) str names of the labels' columns.
    source: how to open the items again (see `data.image_sets.open_spec`), or {}.
    model: the run and code length that encoded them, or {}.
  """

  codes: np.ndarray
  packed: np.ndarray
  paths: np.ndarray
  labels: np.ndarray | None = None
  label_names: np.ndarray | None = None
  source: dict = dataclasses.field(default_factory=dict)
  model: dict = dataclasses.field(default_factory=dict)

  @property
  def bits(self) -> int:
    return self.codes.shape[1]

  def __len__(self) -> int:
    return len(self.codes)


def pack_signs(codes):
  """{-1, +1} codes (n, c) -> uint8 (n, ceil(c / 8)), FAISS's layout (see ItemCodes).

  Pad bits are 0 on every row, so Hamming distances are unchanged.
  """
  return np.packbits(np.asarray(codes) > 0, axis=1, bitorder="little")


def save_item_codes(path, item_codes, name="--out"):
  """Writes an ItemCodes as .npz, through a temporary file renamed into place,
  so that a reader never sees half a file."""
  item = item_codes
  codes = check_codes(item.codes, "codes")
  if (codes == 0).any():
    raise CodesError("codes: item code files hold only -1 and +1 bits.")
  arrays = {
    "codes": codes.astype(np.float32),
    "packed": pack_signs(codes),
    "paths": np.asarray(item.paths, dtype=str),
    "source": json.dumps(item.source),
    "model": json.dumps(item.model),
  }
  if item.labels is not None:
    arrays["labels"] = check_labels(item.labels, "labels")
  if item.label_names is not None:
    arrays["label_names"] = np.asarray(item.label_names, dtype=str)
  with files.replaced(path, name) as tmp:
    np.savez(tmp, **arrays)


def read_npz(path, error_type, fix):
  """All arrays of an .npz file, or error_type naming the file and `fix`."""
  if not zipfile.is_zipfile(path):
    raise error_type(f"{path}: not an .npz file (not a zip archive); {fix}.")
  try:
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
    raise error_type(f"{path}: not a readable .npz file ({error}); {fix}.") from None


def load_item_codes(path):
  """Reads and validates a file written by `save_item_codes` (or by hand: only
  `codes` and `paths` are required; `packed` is recomputed when absent)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CodesError(
      f"{path}: no such file; give a codes file written by python -m schn_jax.encode."
    )
  arrays = read_npz(path, CodesError, "give a codes file written by python -m schn_jax.encode")
  missing = [key for key in ("codes", "paths") if key not in arrays]
  if missing:
    raise CodesError(
      f"{path}: missing key(s) {missing}; found "
      f"{sorted(arrays)}. A codes file holds codes (n, bits) in "
      "{-1, +1} and paths (n,); write it with python -m "
      "schn_jax.encode."
    )
  codes = check_codes(arrays["codes"], f"{path}: codes")
  if (codes == 0).any():
    row = int(np.nonzero((codes == 0).any(1))[0][0])
    raise CodesError(
      f"{path}: codes row {row} has 0 bits; item codes must be "
      "-1 or +1 (binarise with np.where(u < 0, -1, 1))."
    )
  n = len(codes)
  paths = arrays["paths"]
  if paths.shape != (n,):
    raise CodesError(f"{path}: paths has shape {paths.shape}, expected ({n},) to match codes.")
  packed = pack_signs(codes)
  if "packed" in arrays and not np.array_equal(arrays["packed"], packed):
    raise CodesError(
      f"{path}: packed does not match codes; rewrite the file with python -m schn_jax.encode."
    )
  labels = arrays.get("labels")
  if labels is not None:
    labels = check_labels(labels, f"{path}: labels")
    if len(labels) != n:
      raise CodesError(f"{path}: labels has {len(labels)} rows, codes {n}.")
  label_names = arrays.get("label_names")
  if label_names is not None and (labels is None or label_names.shape != labels.shape[1:]):
    raise CodesError(
      f"{path}: label_names has shape {label_names.shape}, expected one name per column of labels."
    )
  meta = {}
  for key in ("source", "model"):
    try:
      meta[key] = json.loads(str(arrays[key])) if key in arrays else {}
    except json.JSONDecodeError as error:
      raise CodesError(f"{path}: {key} is not JSON ({error}).") from None
  return ItemCodes(
    codes.astype(np.float32),
    packed,
    paths.astype(str),
    labels,
    label_names,
    meta["source"],
    meta["model"],
  )
