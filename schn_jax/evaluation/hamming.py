"""Hamming distance on bit-packed codes, and exact top-k search.

Distances are computed in integer 'units'. For codes in {-1, +1}, one unit
is one bit. When any code has zero (unset) bits, one unit is half a bit: the
reference's distance (c - q.b) / 2 gives a zero bit half a bit against
anything, so 2 d = c - popcount(both set) + 2 popcount(both set and differ)
is an exact integer. Either way there are few distinct distances (at most
2c + 1), which the metrics use instead of sorting.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax.evaluation import codes as codes_lib


class PackedCodes:
  """Codes as uint32 sign and nonzero planes, plus what is needed to rank."""

  def __init__(self, codes):
    self.bits = codes.shape[1]
    self.num_items = codes.shape[0]
    self.signs, self.nonzero = codes_lib.pack_codes(codes)
    self.has_zeros = bool((codes == 0).any())


def distance_scale(query, database):
  """Units per bit: 2 when either side has zero bits, else 1."""
  return 2 if query.has_zeros or database.has_zeros else 1


def unit_distances(
  query_signs, query_nonzero, database_signs, database_nonzero, *, bits, half_units
):
  """Integer distances (Q, M) in units; traceable, used inside jitted code."""
  differ = query_signs[:, None, :] ^ database_signs[None, :, :]
  if not half_units:
    return jax.lax.population_count(differ).astype(jnp.int32).sum(-1)
  both = query_nonzero[:, None, :] & database_nonzero[None, :, :]
  num_both = jax.lax.population_count(both).astype(jnp.int32).sum(-1)
  num_differ = jax.lax.population_count(differ & both).astype(jnp.int32).sum(-1)
  return bits - num_both + 2 * num_differ


def hamming_distances(query_codes, database_codes):
  """Hamming distances (Q, N) as float32, half-integers where bits are 0.

  Materialises the whole matrix: for inspection and tests, not for ranking
  large databases (use `hamming_topk` or `metrics.evaluate_codes`).
  """
  query = PackedCodes(codes_lib.check_codes(query_codes, "query_codes"))
  database = PackedCodes(codes_lib.check_codes(database_codes, "database_codes"))
  scale = distance_scale(query, database)
  units = jax.jit(unit_distances, static_argnames=("bits", "half_units"))(
    query.signs,
    query.nonzero,
    database.signs,
    database.nonzero,
    bits=query.bits,
    half_units=scale == 2,
  )
  return np.asarray(units, dtype=np.float32) / scale


@functools.partial(jax.jit, static_argnames=("k", "bits", "half_units"))
def _topk_chunk(
  best_units,
  best_ids,
  query_signs,
  query_nonzero,
  database_signs,
  database_nonzero,
  first_id,
  num_valid,
  *,
  k,
  bits,
  half_units,
):
  """Merges one database chunk into the running top-k of a query chunk."""
  units = unit_distances(
    query_signs, query_nonzero, database_signs, database_nonzero, bits=bits, half_units=half_units
  )
  valid = jnp.arange(units.shape[1]) < num_valid
  # float32 holds these small integers exactly, and XLA's CPU top_k is about
  # 50x faster on float32 than on int32.
  units = jnp.where(valid, units, jnp.inf).astype(jnp.float32)
  neg_units, chunk_pos = jax.lax.top_k(-units, k)
  # lax.top_k puts the lower index first among equal values, and the running
  # best (lower database ids) comes first in the concatenation, so ties are
  # broken by database index across chunks too.
  merged_neg = jnp.concatenate([-best_units, neg_units], axis=1)
  merged_ids = jnp.concatenate([best_ids, chunk_pos + first_id], axis=1)
  neg_best, order = jax.lax.top_k(merged_neg, k)
  return -neg_best, jnp.take_along_axis(merged_ids, order, axis=1)


def hamming_topk(query_codes, database_codes, k, *, query_chunk=64, database_chunk=1 << 18):
  """Exact top-k database ids and distances per query, ties by database id.

  Memory is bounded by query_chunk x database_chunk distances, whatever the
  database size. Returns (ids int64 (Q, k), distances float32 (Q, k)).
  """
  query = PackedCodes(codes_lib.check_codes(query_codes, "query_codes"))
  database = PackedCodes(codes_lib.check_codes(database_codes, "database_codes"))
  if query.bits != database.bits:
    raise codes_lib.CodesError(
      f"query codes have {query.bits} bits but database codes have {database.bits}."
    )
  if not 1 <= k <= database.num_items:
    raise ValueError(f"k={k} must be between 1 and the database size ({database.num_items}).")
  scale = distance_scale(query, database)
  database_chunk = min(database_chunk, database.num_items)
  db_signs, db_nonzero = (pad_rows(a, database_chunk) for a in (database.signs, database.nonzero))
  q_signs, q_nonzero = (pad_rows(a, query_chunk) for a in (query.signs, query.nonzero))
  all_ids, all_units = [], []
  for q0 in range(0, query.num_items, query_chunk):
    best_units = jnp.full((query_chunk, k), jnp.inf)
    best_ids = jnp.full((query_chunk, k), -1, dtype=jnp.int32)
    for d0 in range(0, database.num_items, database_chunk):
      best_units, best_ids = _topk_chunk(
        best_units,
        best_ids,
        q_signs[q0 : q0 + query_chunk],
        q_nonzero[q0 : q0 + query_chunk],
        db_signs[d0 : d0 + database_chunk],
        db_nonzero[d0 : d0 + database_chunk],
        d0,
        min(database_chunk, database.num_items - d0),
        k=k,
        bits=query.bits,
        half_units=scale == 2,
      )
    all_ids.append(best_ids)
    all_units.append(best_units)
  ids = np.concatenate(all_ids)[: query.num_items].astype(np.int64)
  units = np.concatenate(all_units)[: query.num_items]
  return ids, units / scale


def pad_rows(array, multiple):
  """Pads rows with zeros up to a multiple, so every chunk has one shape."""
  extra = -array.shape[0] % multiple
  return np.pad(array, ((0, extra), (0, 0)))
