"""Retrieval metrics: mAP@K in three tie modes, PR and P@N curves.

No sort. With c bits there are at most 2c + 1 distinct distances ('buckets',
see hamming.py), so for every query one pass over the database counts the
items and the relevant items per bucket. That alone gives the tie-aware AP,
the radius curves and the (tie-independent, expected) P@N curves. The stable
order (ties by database index) needs, for each relevant item, its position:
the items in lower buckets plus the items of its own bucket with a smaller
index. A second pass finds those from per-block bucket counts (blocks of
_BLOCK items, in index order) and an all-pairs comparison inside each block.
See docs/evaluation.md for the definitions and the tie-aware derivation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import hamming

TIE_MODES = ('stable', 'reference', 'tie_aware')
_BLOCK = 32  # Items compared all-pairs for their order inside a bucket.
_GROUP = 256  # Items per float32 partial sum; the host adds them in float64.
_HIGH = 1 << 16  # Packs (relevant, all) counts of a block into one int32.


def ranking_window(topk, num_database, ties):
  """Number of ranked items an AP@topk looks at, or ValueError.

  topk = -1 means all: the whole database, except in 'reference' mode, which
  keeps the reference's `ranked[:topk]` and so drops the last item.
  """
  if ties not in TIE_MODES:
    raise ValueError(f'ties={ties!r}: use one of {TIE_MODES}.')
  if topk == -1:
    return num_database - 1 if ties == 'reference' else num_database
  if not 0 < topk <= num_database:
    raise ValueError(f'topk={topk}: use -1 (all) or 1..{num_database} (the '
                     'database size).')
  return topk


def _relevance(query_label_words, database_label_words):
  shared = query_label_words[:, None, :] & database_label_words[None, :, :]
  return (shared != 0).any(-1)


def _bucket_blocks(query, database, num_valid, *, bits, half_units,
                   num_buckets):
  """Per-block bucket counts of one (query chunk, database chunk) pair.

  Returns units (Q, nb, _BLOCK) with padding set to num_buckets, relevant
  (Q, nb, _BLOCK), and counts of all / relevant items per (query, block,
  bucket), each (Q, nb, num_buckets).
  """
  q_signs, q_nonzero, q_labels = query
  d_signs, d_nonzero, d_labels = database
  units = hamming.unit_distances(q_signs, q_nonzero, d_signs, d_nonzero,
                                 bits=bits, half_units=half_units)
  valid = jnp.arange(units.shape[1]) < num_valid
  units = jnp.where(valid, units, num_buckets)
  relevant = _relevance(q_labels, d_labels) & valid
  shape = (units.shape[0], units.shape[1] // _BLOCK, _BLOCK)
  # Without the barrier XLA fuses the distance computation into every
  # consumer below and recomputes it once per bucket.
  units, relevant = jax.lax.optimization_barrier(
      (units.reshape(shape), relevant.reshape(shape)))
  weight = jnp.where(relevant, _HIGH + 1, 1)
  match = units[:, :, None, :] == jnp.arange(num_buckets)[:, None]
  packed = jnp.where(match, weight[:, :, None, :], 0).sum(-1)
  return units, relevant, *jax.lax.optimization_barrier(
      (packed % _HIGH, packed // _HIGH))


@functools.partial(jax.jit,
                   static_argnames=('bits', 'half_units', 'num_buckets'))
def _histogram_chunk(hist_all, hist_relevant, query, database, num_valid, *,
                     bits, half_units, num_buckets):
  _, _, block_all, block_relevant = _bucket_blocks(
      query, database, num_valid, bits=bits, half_units=half_units,
      num_buckets=num_buckets)
  return hist_all + block_all.sum(1), hist_relevant + block_relevant.sum(1)


def _exclusive_cumsum_blocks(block_counts, seen):
  """Counts in earlier blocks per (query, block, bucket), plus `seen`.

  A scan over blocks: XLA's cumsum on CPU is several times slower here.
  """
  def step(carry, counts):
    return carry + counts, carry
  _, before = jax.lax.scan(step, seen, jnp.moveaxis(block_counts, 1, 0),
                           unroll=8)
  return jnp.moveaxis(before, 0, 1)


@functools.partial(
    jax.jit,
    static_argnames=('bits', 'half_units', 'num_buckets', 'whole_database'))
def _stable_chunk(seen_all, seen_relevant, lower_all, lower_relevant, window,
                  query, database, num_valid, *, bits, half_units,
                  num_buckets, whole_database):
  """Stable-order AP terms of one database chunk.

  seen_* (Q, buckets) count the items of earlier chunks per bucket; lower_*
  (Q, buckets) count the items of the whole database in lower buckets. When
  the chunk is the whole database, lower_* come from the chunk itself and
  the inputs are ignored, which saves the histogram pass.
  Returns the updated seen_*, float32 sums of rank / position over relevant
  items inside the window per group of _GROUP items, and their number.
  """
  units, relevant, block_all, block_relevant = _bucket_blocks(
      query, database, num_valid, bits=bits, half_units=half_units,
      num_buckets=num_buckets)
  total_all, total_relevant = block_all.sum(1), block_relevant.sum(1)
  if whole_database:
    lower_all = jnp.cumsum(total_all, axis=1) - total_all
    lower_relevant = jnp.cumsum(total_relevant, axis=1) - total_relevant
  earlier_in_block = (units[..., :, None] == units[..., None, :]) & (
      jnp.arange(_BLOCK)[:, None] > jnp.arange(_BLOCK))
  weight = jnp.where(relevant, _HIGH + 1, 1)[..., None, :]
  # A barrier again: fused into both consumers, the all-pairs sum is
  # recomputed for each, at several times the cost.
  packed = jax.lax.optimization_barrier(
      jnp.where(earlier_in_block, weight, 0).sum(-1))
  bucket = jnp.minimum(units, num_buckets - 1)
  before_all = _exclusive_cumsum_blocks(block_all, seen_all + lower_all)
  before_relevant = _exclusive_cumsum_blocks(block_relevant,
                                             seen_relevant + lower_relevant)
  position, rank = jax.lax.optimization_barrier((
      jnp.take_along_axis(before_all, bucket, axis=2) + packed % _HIGH + 1,
      jnp.take_along_axis(before_relevant, bucket, axis=2) +
      packed // _HIGH + 1))
  counted = relevant & (position <= window)
  terms = jnp.where(counted, rank.astype(jnp.float32) / position, 0.0)
  sums = terms.reshape(terms.shape[0], -1, _GROUP).sum(-1)
  return (seen_all + total_all, seen_relevant + total_relevant, sums,
          counted.sum((1, 2)))


class _RetrievalSet:
  """Packed, chunk-padded arrays of one evaluation, and its bucket counts."""

  def __init__(self, query_codes, database_codes, query_labels,
               database_labels, query_chunk, database_chunk):
    (query_codes, database_codes, query_labels,
     database_labels) = codes_lib.check_retrieval_set(
         query_codes, database_codes, query_labels, database_labels)
    query = hamming.PackedCodes(query_codes)
    database = hamming.PackedCodes(database_codes)
    self.bits = query.bits
    self.num_queries = query.num_items
    self.num_database = database.num_items
    self.database_rows_with_zeros = int((database_codes == 0).any(1).sum())
    self.scale = hamming.distance_scale(query, database)
    self.num_buckets = self.scale * self.bits + 1
    self.query_chunk = min(query_chunk, self.num_queries)
    self.database_chunk = min(
        -(-database_chunk // _GROUP) * _GROUP,
        -(-self.num_database // _GROUP) * _GROUP)
    self.query = [_pad_rows(a, self.query_chunk) for a in (
        query.signs, query.nonzero, codes_lib.pack_bits(query_labels))]
    self.database = [_pad_rows(a, self.database_chunk) for a in (
        database.signs, database.nonzero,
        codes_lib.pack_bits(database_labels))]
    self.static = dict(bits=self.bits, half_units=self.scale == 2,
                       num_buckets=self.num_buckets)

  def query_chunks(self):
    for q0 in range(0, self.num_queries, self.query_chunk):
      yield q0, [a[q0:q0 + self.query_chunk] for a in self.query]

  def database_chunks(self):
    for d0 in range(0, self.num_database, self.database_chunk):
      yield ([a[d0:d0 + self.database_chunk] for a in self.database],
             min(self.database_chunk, self.num_database - d0))

  def histograms(self, query):
    """Items and relevant items per bucket, each (query_chunk, buckets)."""
    shape = (self.query_chunk, self.num_buckets)
    counts = (jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.int32))
    for database, num_valid in self.database_chunks():
      counts = _histogram_chunk(*counts, query, database, num_valid,
                                **self.static)
    return counts

  def stable_sums(self, query, window):
    """Stable-order AP terms of a query chunk, and its bucket counts.

    Returns the sums of rank / position over relevant items in the window,
    their number, and the items and relevant items per bucket.
    """
    whole_database = self.database_chunk >= self.num_database
    shape = (self.query_chunk, self.num_buckets)
    if whole_database:
      lower = [jnp.zeros(shape, jnp.int32)] * 2
    else:
      lower = [jnp.cumsum(h, axis=1) - h for h in self.histograms(query)]
    seen = [jnp.zeros(shape, jnp.int32)] * 2
    total = np.zeros(self.query_chunk)
    counted = np.zeros(self.query_chunk, np.int64)
    for database, num_valid in self.database_chunks():
      *seen, sums, hits = _stable_chunk(*seen, *lower, window, query,
                                        database, num_valid,
                                        whole_database=whole_database,
                                        **self.static)
      total += np.asarray(sums, np.float64).sum(1)
      counted += np.asarray(hits)
    return total, counted, seen


def _pad_rows(array, multiple):
  return np.pad(array, ((0, -array.shape[0] % multiple), (0, 0)))


def _stable_ap(sums, counted):
  return np.where(counted > 0, sums / np.maximum(counted, 1), 0.0)


def tie_aware_ap(hist_all, hist_relevant, window):
  """Expected AP@window over all orders of tied items, per query (float64).

  hist_* (Q, buckets): items and relevant items per distance bucket, in
  increasing distance. See docs/evaluation.md for the derivation.
  """
  n = np.asarray(hist_all, np.int64)
  r = np.asarray(hist_relevant, np.int64)
  lower = np.cumsum(n, 1) - n
  lower_rel = np.cumsum(r, 1) - r
  # One spare entry: empty buckets are evaluated with size 1, then dropped.
  harmonic = np.concatenate(
      [[0.0], np.cumsum(1.0 / np.arange(1, n.sum(1).max() + 2))])

  def expected_sum(lower, lower_rel, size, num_rel):
    """E[sum of rank/position] over num_rel relevant items placed uniformly
    at random among positions lower+1 .. lower+size."""
    size = np.maximum(size, 1)
    inv_pos = harmonic[lower + size] - harmonic[lower]
    offsets = size - (lower + 1) * inv_pos  # Sum of (j - 1) / (lower + j).
    pair = np.where(size > 1, (num_rel - 1) / np.maximum(size - 1, 1), 0.0)
    return num_rel / size * ((lower_rel + 1) * inv_pos + pair * offsets)

  full = lower + n <= window
  full_sum = np.where(full & (r > 0), expected_sum(lower, lower_rel, n, r),
                      0.0).sum(1)
  full_rel = np.where(full, r, 0).sum(1)
  ap = np.where(full_rel > 0, full_sum / np.maximum(full_rel, 1), 0.0)
  # At most one bucket per query straddles the window: average over the
  # hypergeometric number x of its relevant items that fall inside.
  log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n.max()
                                                               + 1)))])
  cut = (lower < window) & (lower + n > window)
  for q, b in zip(*np.nonzero(cut)):
    size, num_rel, inside = n[q, b], r[q, b], window - lower[q, b]
    x = np.arange(max(0, inside - (size - num_rel)), min(num_rel, inside) + 1)
    log_pmf = (log_fact[num_rel] - log_fact[x] - log_fact[num_rel - x] +
               log_fact[size - num_rel] - log_fact[inside - x] -
               log_fact[size - num_rel - inside + x] - log_fact[size] +
               log_fact[inside] + log_fact[size - inside])
    cut_sum = expected_sum(lower[q, b], lower_rel[q, b], inside, x)
    hits = full_rel[q] + x
    ap[q] = np.sum(np.exp(log_pmf) *
                   np.where(hits > 0, (full_sum[q] + cut_sum) /
                            np.maximum(hits, 1), 0.0))
  return ap


def _curves(hist_all, hist_relevant, scale, num_points=64):
  """Radius and top-N curves from bucket counts (tie-independent)."""
  n = np.asarray(hist_all, np.float64)
  r = np.asarray(hist_relevant, np.float64)
  total_rel = r.sum(1)
  has_rel = total_rel > 0
  within_all = np.cumsum(n, 1)
  within_rel = np.cumsum(r, 1)
  precision_radius = np.where(within_all > 0,
                              within_rel / np.maximum(within_all, 1), 0.0)
  recall_radius = within_rel[has_rel] / total_rel[has_rel, None]
  num_database = int(n[0].sum())
  top_n = np.unique(np.round(np.geomspace(1, num_database, num_points))
                    ).astype(np.int64)
  # Expected relevant items in the top N: the buckets entirely above N, plus
  # the relevant share of the bucket that N cuts.
  bucket = (within_all[:, :, None] < top_n).sum(1)
  bucket = np.minimum(bucket, n.shape[1] - 1)
  lower = np.take_along_axis(within_all - n, bucket, 1)
  lower_rel = np.take_along_axis(within_rel - r, bucket, 1)
  size = np.take_along_axis(n, bucket, 1)
  share = np.take_along_axis(r, bucket, 1) / np.maximum(size, 1)
  rel_top_n = lower_rel + (top_n - lower) * share
  return {
      'radius': (np.arange(n.shape[1]) / scale).tolist(),
      'precision_at_radius': precision_radius.mean(0).tolist(),
      'recall_at_radius': (recall_radius.mean(0) if has_rel.any() else
                           np.zeros(n.shape[1])).tolist(),
      'n': top_n.tolist(),
      'precision_at_n': (rel_top_n / top_n).mean(0).tolist(),
      'recall_at_n': ((rel_top_n[has_rel] / total_rel[has_rel, None]).mean(0)
                      if has_rel.any() else np.zeros(len(top_n))).tolist(),
  }


def _evaluate(query_codes, database_codes, query_labels, database_labels,
              topk, ties, query_chunk, database_chunk):
  data = _RetrievalSet(query_codes, database_codes, query_labels,
                       database_labels, query_chunk, database_chunk)
  window = ranking_window(topk, data.num_database, ties)
  hist_all, hist_relevant, ap = [], [], []
  for q0, query in data.query_chunks():
    num = min(data.query_chunk, data.num_queries - q0)
    if ties == 'tie_aware':
      counts = data.histograms(query)
      ap.append(tie_aware_ap(*counts, window)[:num])
    else:
      sums, counted, counts = data.stable_sums(query, window)
      ap.append(_stable_ap(sums, counted)[:num])
    hist_all.append(np.asarray(counts[0])[:num])
    hist_relevant.append(np.asarray(counts[1])[:num])
  return (data, window, np.concatenate(ap), np.concatenate(hist_all),
          np.concatenate(hist_relevant))


def average_precisions(query_codes, database_codes, query_labels,
                       database_labels, topk=-1, ties='stable', *,
                       query_chunk=64, database_chunk=1 << 16):
  """AP@topk of every query (float64, (Q,)); see `evaluate_codes`."""
  return _evaluate(query_codes, database_codes, query_labels, database_labels,
                   topk, ties, query_chunk, database_chunk)[2]


def evaluate_codes(query_codes, database_codes, query_labels, database_labels,
                   topk=-1, ties='stable', *, query_chunk=64,
                   database_chunk=1 << 16):
  """All retrieval metrics of one code set, as a JSON-serialisable dict.

  Args:
    query_codes: (Q, c) in {-1, +1} (0 allowed, counted as unset).
    database_codes: (N, c) in {-1, +1}, or 0 for unset bits.
    query_labels: (Q, classes) multi-hot 0/1.
    database_labels: (N, classes) multi-hot 0/1.
    topk: K of mAP@K, or -1 for all.
    ties: 'stable' (ties by database index), 'reference' (stable, with the
      reference's slicing) or 'tie_aware' (expectation over tie orders).
    query_chunk, database_chunk: sizes that bound memory to about
      query_chunk x database_chunk x buckets bytes per step.

  Returns:
    `map` averages AP over all queries (a query with no relevant item in the
    window counts 0); `map_over_queries_with_relevant` averages over queries
    with at least one relevant database item. Curves are tie-independent.
  """
  data, window, ap, hist_all, hist_relevant = _evaluate(
      query_codes, database_codes, query_labels, database_labels, topk, ties,
      query_chunk, database_chunk)
  has_relevant = hist_relevant.sum(1) > 0
  curves = _curves(hist_all, hist_relevant, data.scale)
  return {
      'map': float(ap.mean()),
      'map_over_queries_with_relevant':
          float(ap[has_relevant].mean()) if has_relevant.any() else 0.0,
      'num_queries_with_relevant': int(has_relevant.sum()),
      'topk': int(topk),
      'window': int(window),
      'ties': ties,
      'num_queries': data.num_queries,
      'num_database': data.num_database,
      'bits': data.bits,
      'database_rows_with_zero_bits': data.database_rows_with_zeros,
      'precision_at_radius_2': curves['precision_at_radius'][2 * data.scale],
      'curves': curves,
  }
