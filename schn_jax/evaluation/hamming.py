"""Hamming distance on bit-packed codes.

Distances are computed in integer 'units'. For codes in {-1, +1}, one unit
is one bit. When any code has zero (unset) bits, one unit is half a bit: the
reference's distance (c - q.b) / 2 gives a zero bit half a bit against
anything, so 2 d = c - popcount(both set) + 2 popcount(both set and differ)
is an exact integer. Either way there are few distinct distances (at most
2c + 1), which the metrics use instead of sorting.
"""

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
  large databases (use `metrics.evaluate_codes`, or `indexes` to search).
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


def pad_rows(array, multiple):
  """Pads rows with zeros up to a multiple, so every chunk has one shape."""
  extra = -array.shape[0] % multiple
  return np.pad(array, ((0, extra), (0, 0)))
