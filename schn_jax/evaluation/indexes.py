"""FAISS binary indexes of {-1, +1} codes: build, save, load, k-NN and radius search.

An index is described by `flat` (exhaustive, exact) or any
`faiss.index_binary_factory` string: `BHash16` (one hash table on 16 bits),
`BHash4x16` (multi-index hashing, 4 tables), `BIVF256` (inverted file),
`BHNSW32` (graph), `BIVF256_BHNSW32`... Indexes that need training (IVF) are
trained on the database codes they index.

FAISS stores d-bit codes in d / 8 bytes, so codes of c bits are padded with 0
bits up to the next multiple of 8 (`codes.pack_signs`), queries and database
alike, which leaves every Hamming distance unchanged. FAISS has no 'unset'
bit, so codes with 0 values are refused.

Results are per query, ordered by Hamming distance then by database position
(FAISS orders ties its own way; they are re-sorted here), with database
positions 0..n-1 as ids. For `flat` the k nearest are the exact ranking (a
stable sort of every distance), ties included (tests/test_indexes.py). Approximate
indexes may find fewer than k neighbours; those rows are shorter, never
padded with FAISS's -1 ids.
"""

import hashlib
import json
import logging
import pathlib

import faiss
import numpy as np

from schn_jax import errors, files
from schn_jax.evaluation import codes as codes_lib

FLAT = "flat"
EXAMPLES = "flat, BHash16, BHash4x16, BIVF256, BHNSW32"


class SearchError(errors.UserError, ValueError):
  """An index description, index file, query or k that cannot be used."""


def faiss_bytes(codes, name="codes"):
  """{-1, +1} codes (n, c) -> uint8 (n, ceil(c / 8)) for FAISS; refuses 0 bits."""
  codes = codes_lib.check_codes(codes, name)
  if (codes == 0).any():
    rows = np.nonzero((codes == 0).any(1))[0]
    raise SearchError(
      f"{name}: {len(rows)} row(s) have 0 (unset) bits, e.g. row "
      f"{rows[0]}; FAISS stores only +-1 bits. Drop those rows or "
      "recompute their codes first."
    )
  return codes_lib.pack_signs(codes)


def build_index(database_codes, description=FLAT):
  """A FAISS binary index of `database_codes`, ids = row positions.

  Args:
    database_codes: (n, c) in {-1, +1}.
    description: 'flat' or a faiss.index_binary_factory string.
  """
  packed = faiss_bytes(database_codes, "database codes")
  dim = packed.shape[1] * 8
  factory = "BFlat" if description == FLAT else description
  try:
    index = faiss.index_binary_factory(dim, factory)
  except RuntimeError as error:
    raise SearchError(
      f"index {description!r}: FAISS cannot build it for {dim}-bit codes "
      f"({_faiss_message(error)}); use one of {EXAMPLES} or another "
      "faiss.index_binary_factory string."
    ) from None
  bits = np.shape(database_codes)[1]
  hashed = getattr(index, "b", 0) * getattr(index, "nhash", 1)
  if hashed > bits:
    raise SearchError(
      f"index {description!r} hashes {hashed} bits but the codes have {bits}: "
      f"hash at most {bits} (e.g. BHash{min(16, bits)})."
    )
  if not index.is_trained:
    nlist = getattr(index, "nlist", 0)
    if len(packed) < nlist:
      raise SearchError(
        f"index {description!r} has {nlist} lists but the database holds "
        f"only {len(packed)} codes: use fewer lists (e.g. BIVF"
        f"{max(1, len(packed) // 39)}) or flat."
      )
    index.train(packed)
  index.add(packed)
  return index


def set_search_parameters(index, *, nprobe=None, nflip=None, ef_search=None):
  """Sets the speed/recall knobs an index has, each checked against the index.

  nprobe: inverted lists visited (IVF, 1..nlist, default 1); nflip: bits
  flipped when probing hash buckets (BHash, 0..hashed bits, default 0);
  ef_search: candidate list size (HNSW, >= 1, default 16). Naming a knob the
  index lacks, or a value out of its range, is a SearchError.
  """
  limits = {
    "nprobe": (1, getattr(index, "nlist", None)),
    "nflip": (0, getattr(index, "b", None)),
  }
  for name, value in (("nprobe", nprobe), ("nflip", nflip)):
    if value is None:
      continue
    if not hasattr(index, name):
      raise SearchError(
        f"{name} applies to {_KNOB_OWNERS[name]} indexes, not to {type(index).__name__}."
      )
    low, high = limits[name]
    if not low <= value <= high:
      raise SearchError(f"{name}={value}: this {type(index).__name__} takes {low} to {high}.")
    setattr(index, name, int(value))
  if ef_search is not None:
    if not hasattr(index, "hnsw"):
      raise SearchError(f"ef_search applies to HNSW indexes, not to {type(index).__name__}.")
    if not 1 <= ef_search <= 2**31 - 1:
      raise SearchError(f"ef_search={ef_search}: give a candidate list size of at least 1.")
    index.hnsw.efSearch = int(ef_search)


_KNOB_OWNERS = {"nprobe": "IVF (BIVF...)", "nflip": "hash (BHash...)"}


def _fingerprint_path(path):
  path = pathlib.Path(path)
  return path.with_name(path.name + ".codes.json")


def codes_fingerprint(database_codes):
  """What identifies the codes an index holds: count, length and a SHA-256 of
  their bits."""
  codes = np.asarray(database_codes)
  return {
    "count": int(codes.shape[0]),
    "bits": int(codes.shape[1]),
    "sha256": hashlib.sha256(codes_lib.pack_signs(codes).tobytes()).hexdigest(),
  }


def save_index(index, path, database_codes, name="--save_index"):
  """Writes the index and, beside it (`<path>.codes.json`), the fingerprint of
  the codes it was built from, which `load_index` checks."""
  fingerprint_path = _fingerprint_path(path)
  fingerprint_path.unlink(missing_ok=True)
  with files.replaced(path, name) as tmp:
    faiss.write_index_binary(index, str(tmp))
  files.write_text(fingerprint_path, json.dumps(codes_fingerprint(database_codes)), name)


def load_index(path, database_codes):
  """The index saved at `path` by `save_index` from exactly `database_codes`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SearchError(f"{path}: no such index file; write one with --save_index.")
  try:
    index = faiss.read_index_binary(str(path))
  except RuntimeError as error:
    raise SearchError(
      f"{path}: not a FAISS binary index "
      f"({_faiss_message(error)}); build it again with "
      "--save_index."
    ) from None
  check_index(index, len(database_codes), np.shape(database_codes)[1], f"index {path}")
  try:
    saved = json.loads(_fingerprint_path(path).read_text())
  except (OSError, ValueError):
    saved = None
  if saved != codes_fingerprint(database_codes):
    raise SearchError(
      f"{path}: this index was not built from these database codes "
      f"({_fingerprint_path(path).name} is missing or names other codes); "
      "build it again from them with --save_index."
    )
  return index


def check_index(index, database_size, bits, index_name="index"):
  """Refuses an index that does not hold `database_size` codes of `bits` bits."""
  dim = -(-bits // 8) * 8
  if index.d != dim:
    raise SearchError(
      f"{index_name} holds {index.d}-bit codes but the codes "
      f"have {bits} bits: build the index from codes of the "
      "same length."
    )
  if index.ntotal != database_size:
    raise SearchError(
      f"{index_name} holds {index.ntotal} codes but the "
      f"database has {database_size}: build the index from "
      "this database."
    )


def knn(index, query_codes, k):
  """The k nearest database items of each query.

  k is clipped to the database size (with a warning). Returns a list over
  queries of (ids int64, distances int64), each ordered by distance then id.
  """
  if k <= 0:
    raise SearchError(f"k={k}: ask for at least one neighbour.")
  if k > index.ntotal:
    logging.warning(
      "k=%d is more than the %d database items: returning all of them.", k, index.ntotal
    )
    k = index.ntotal
  distances, ids = index.search(_query_bytes(index, query_codes), k)
  # Missing results (id -1) come with the largest distance, so they sort last.
  order = np.lexsort((ids, distances), axis=1)
  ids = np.take_along_axis(ids, order, 1).astype(np.int64)
  distances = np.take_along_axis(distances, order, 1).astype(np.int64)
  if (ids >= 0).all():
    return list(zip(ids, distances))
  return [
    (row_ids[row_ids >= 0], row_distances[row_ids >= 0])
    for row_ids, row_distances in zip(ids, distances)
  ]


def range_search(index, query_codes, radius):
  """Every database item within Hamming distance `radius` (inclusive) of each
  query: the hash-lookup protocol. Same result layout as `knn`."""
  if not 0 <= radius <= index.d:
    raise SearchError(f"radius={radius}: give a Hamming distance from 0 to the code length.")
  queries = _query_bytes(index, query_codes)
  try:
    # FAISS keeps distances strictly below its radius.
    limits, distances, ids = index.range_search(queries, int(radius) + 1)
  except RuntimeError as error:
    raise SearchError(
      f"{type(index).__name__} has no radius search "
      f"({_faiss_message(error)}); use flat, BHash, BIVF or "
      "k-NN search."
    ) from None
  return [_ordered(ids[a:b], distances[a:b]) for a, b in zip(limits[:-1], limits[1:])]


def _query_bytes(index, query_codes):
  packed = faiss_bytes(query_codes, "query codes")
  if packed.shape[1] * 8 != index.d:
    raise SearchError(
      f"query codes have {np.shape(query_codes)[1]} bits but "
      f"the index holds {index.d}-bit codes: encode the "
      "queries with the model and code length of the database."
    )
  return packed


def _ordered(ids, distances):
  found = ids >= 0
  ids, distances = ids[found].astype(np.int64), distances[found].astype(np.int64)
  order = np.lexsort((ids, distances))
  return ids[order], distances[order]


def _faiss_message(error):
  """FAISS's exception text without its C++ location prefix."""
  text = str(error).strip().splitlines()[0]
  return text.split("failed: ")[-1].split(": Error: ")[-1]
