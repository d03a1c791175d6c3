"""An exact Hamming top-k in JAX, for benchmarks/eval_speed.py to set beside FAISS's
IndexBinaryFlat (the library searches with FAISS: schn_jax.evaluation.indexes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import hamming


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
  units = hamming.unit_distances(
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


def jax_topk(query_codes, database_codes, k, *, query_chunk=64, database_chunk=1 << 18):
  """Exact top-k database ids and distances per query, ties by database id.

  Memory is bounded by query_chunk x database_chunk distances, whatever the
  database size. Returns (ids int64 (Q, k), distances float32 (Q, k)).
  """
  query = hamming.PackedCodes(codes_lib.check_codes(query_codes, "query_codes"))
  database = hamming.PackedCodes(codes_lib.check_codes(database_codes, "database_codes"))
  if query.bits != database.bits:
    raise codes_lib.CodesError(
      f"query codes have {query.bits} bits but database codes have {database.bits}."
    )
  if not 1 <= k <= database.num_items:
    raise ValueError(f"k={k} must be between 1 and the database size ({database.num_items}).")
  scale = hamming.distance_scale(query, database)
  database_chunk = min(database_chunk, database.num_items)
  db_signs, db_nonzero = (
    hamming.pad_rows(a, database_chunk) for a in (database.signs, database.nonzero)
  )
  q_signs, q_nonzero = (hamming.pad_rows(a, query_chunk) for a in (query.signs, query.nonzero))
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
