"""FAISS binary indexes of {-1, +1} codes, and a small search API and CLI.

FAISS stores d-bit codes as d / 8 bytes, so d must be a multiple of 8: codes
of c bits are padded with 0 bits up to the next multiple of 8 on every row,
queries and database alike, which leaves every Hamming distance unchanged.
FAISS has no 'unset' bit, so codes with 0 values are refused.

  python -m schn_jax.evaluation.search --codes FILE.npz --build INDEX \
      [--kind flat|hash|multihash]
  python -m schn_jax.evaluation.search --index INDEX --codes FILE.npz --k 10

The first builds an index of `database_codes` (ids 0..N-1); the second
prints one JSON line per query: {"query", "ids", "distances"}.
"""

import argparse
import json

import faiss
import numpy as np

from schn_jax.evaluation import codes as codes_lib

INDEX_KINDS = ('flat', 'hash', 'multihash')


def to_faiss_bytes(codes, name='codes'):
  """Packs {-1, +1} codes (n, c) into uint8 (n, ceil(c / 8)), bit 1 = +1."""
  codes = codes_lib.check_codes(codes, name)
  if (codes == 0).any():
    rows = np.nonzero((codes == 0).any(1))[0]
    raise codes_lib.CodesError(
        f'{name}: {len(rows)} row(s) have 0 (unset) bits, e.g. row '
        f'{rows[0]}; FAISS stores only +-1 bits. Drop those rows or '
        'recompute their codes first.')
  return np.packbits(codes > 0, axis=1, bitorder='little')


def build_index(database_codes, ids=None, kind='flat', hash_bits=None):
  """A FAISS binary index of database codes, searchable by database id.

  kind 'flat' is exhaustive and exact; 'hash' (IndexBinaryHash) and
  'multihash' (IndexBinaryMultiHash) look up buckets of hash_bits-bit code
  prefixes (default min(16, bits)) and are sub-linear but approximate: they
  only return items within the index's nflip radius on those prefixes.
  """
  packed = to_faiss_bytes(database_codes, 'database_codes')
  dim = packed.shape[1] * 8
  hash_bits = hash_bits or min(16, dim)
  if kind == 'flat':
    index = faiss.IndexBinaryFlat(dim)
  elif kind == 'hash':
    index = faiss.IndexBinaryHash(dim, hash_bits)
  elif kind == 'multihash':
    index = faiss.IndexBinaryMultiHash(dim, max(1, dim // hash_bits),
                                       hash_bits)
  else:
    raise ValueError(f'kind={kind!r}: use one of {INDEX_KINDS}.')
  ids = np.arange(len(packed)) if ids is None else np.asarray(ids)
  if ids.shape != (len(packed),):
    raise ValueError(f'ids: expected shape ({len(packed)},), got {ids.shape}.')
  # Flat and multi-hash indexes only number items 0..n-1; the map adds ids.
  index = faiss.IndexBinaryIDMap(index)
  index.add_with_ids(packed, ids.astype(np.int64))
  return index


def save_index(index, path):
  faiss.write_index_binary(index, str(path))


def load_index(path):
  return faiss.read_index_binary(str(path))


def search(index, query_codes, k):
  """Top-k (ids, Hamming distances) per query, both int64 (Q, k).

  Missing results (fewer than k within a hash index's radius) are id -1.
  Ties come in FAISS's order, not necessarily by id.
  """
  packed = to_faiss_bytes(query_codes, 'query_codes')
  if packed.shape[1] * 8 != index.d:
    raise codes_lib.CodesError(
        f'query codes pack to {packed.shape[1] * 8} bits but the index holds '
        f'{index.d}-bit codes.')
  distances, ids = index.search(packed, k)
  return ids.astype(np.int64), distances.astype(np.int64)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--codes', required=True,
                      help='code npz (see docs/evaluation.md)')
  parser.add_argument('--build', help='write an index of database_codes here')
  parser.add_argument('--kind', default='flat', choices=INDEX_KINDS)
  parser.add_argument('--index', help='search this index with query_codes')
  parser.add_argument('--k', type=int, default=10)
  args = parser.parse_args(argv)
  arrays = codes_lib.load_codes(args.codes)
  if args.build:
    save_index(build_index(arrays['database_codes'], kind=args.kind),
               args.build)
    print(json.dumps({'index': args.build, 'kind': args.kind,
                      'num_database': len(arrays['database_codes'])}))
  if args.index:
    ids, distances = search(load_index(args.index), arrays['query_codes'],
                            args.k)
    for query, (row_ids, row_distances) in enumerate(zip(ids, distances)):
      print(json.dumps({'query': query, 'ids': row_ids.tolist(),
                        'distances': row_distances.tolist()}))
  if not (args.build or args.index):
    parser.error('give --build INDEX, --index INDEX, or both.')


if __name__ == '__main__':
  main()
