"""Retrieval metrics: mAP@K in three tie modes, PR and P@N curves.

No sort. With c bits there are at most 2c + 1 distinct distances ('buckets',
see hamming.py), so for every query one pass over the database counts the
items and the relevant items per bucket. That alone gives the tie-aware AP,
the radius curves and the (tie-independent, expected) P@N curves. The stable
order (ties by database index) is then a counting sort: a second pass in
index order, with per-bucket running counters started at the counts of the
lower buckets, gives each relevant item its position and its rank among
relevant items. JAX computes distances and relevance per (query chunk,
database chunk); the two passes are Numba loops, since their scattered
counter updates are slow as XLA CPU array code.
See docs/evaluation.md for the definitions and the tie-aware derivation.
"""

import functools

import jax
import numba
import numpy as np

from schn_jax import errors
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import hamming

TIE_MODES = ("stable", "reference", "tie_aware")


def ranking_window(topk, num_database, ties):
  """Number of ranked items an AP@topk looks at, or ConfigError (a ValueError).

  topk = -1 means all: the whole database, except in 'reference' mode, which
  keeps the reference's `ranked[:topk]` and so drops the last item.
  """
  if ties not in TIE_MODES:
    raise errors.ConfigError(f"ties={ties!r}: use one of {TIE_MODES}.")
  if topk == -1:
    return num_database - 1 if ties == "reference" else num_database
  if not 0 < topk <= num_database:
    raise errors.ConfigError(f"topk={topk}: use -1 (all) or 1..{num_database} (the database size).")
  return topk


@functools.partial(jax.jit, static_argnames=("bits", "half_units"))
def _distances_chunk(query, database, *, bits, half_units):
  """Distances in units (Q, M) int32 and relevance (Q, M) bool."""
  q_signs, q_nonzero, q_labels = query
  d_signs, d_nonzero, d_labels = database
  units = hamming.unit_distances(
    q_signs, q_nonzero, d_signs, d_nonzero, bits=bits, half_units=half_units
  )
  shared = q_labels[:, None, :] & d_labels[None, :, :]
  return units, (shared != 0).any(-1)


# cache=True keeps the compiled loops in __pycache__, so only the first
# process on a machine pays the seconds of compilation. Serial loops: with
# prange, Numba's threads compete with XLA's (busy after each distance
# chunk), and the whole evaluation was 1.5-2x slower on 2 cores.
@numba.njit(cache=True)
def _count_buckets(units, relevant, num_valid, hist_all, hist_relevant):
  """Adds the items and relevant items per bucket to hist_* (Q, buckets)."""
  for q in range(units.shape[0]):
    for j in range(num_valid):
      hist_all[q, units[q, j]] += 1
      if relevant[q, j]:
        hist_relevant[q, units[q, j]] += 1


@numba.njit(cache=True)
def _stable_terms(units, relevant, num_valid, ranked_all, ranked_relevant, window, sums, counted):
  """Adds stable-order AP terms of one database chunk to sums, counted (Q,).

  ranked_* (Q, buckets) count the items (relevant items) ranked before the
  next item of each bucket: the lower buckets plus the items of the bucket
  already seen in index order. They are updated in place, so chunks in
  index order continue where the previous one stopped.
  """
  for q in range(units.shape[0]):
    total = 0.0
    hits = 0
    for j in range(num_valid):
      bucket = units[q, j]
      ranked_all[q, bucket] += 1
      if relevant[q, j]:
        ranked_relevant[q, bucket] += 1
        position = ranked_all[q, bucket]
        if position <= window:
          total += ranked_relevant[q, bucket] / position
          hits += 1
    sums[q] += total
    counted[q] += hits


class _RetrievalSet:
  """Packed, chunk-padded arrays of one evaluation."""

  def __init__(
    self, query_codes, database_codes, query_labels, database_labels, query_chunk, database_chunk
  ):
    (query_codes, database_codes, query_labels, database_labels) = codes_lib.check_retrieval_set(
      query_codes, database_codes, query_labels, database_labels
    )
    query = hamming.PackedCodes(query_codes)
    database = hamming.PackedCodes(database_codes)
    self.bits = query.bits
    self.num_queries = query.num_items
    self.num_database = database.num_items
    self.database_rows_with_zeros = int((database_codes == 0).any(1).sum())
    self.scale = hamming.distance_scale(query, database)
    self.num_buckets = self.scale * self.bits + 1
    self.query_chunk = min(query_chunk, self.num_queries)
    self.database_chunk = min(database_chunk, self.num_database)
    self.query = [
      hamming.pad_rows(a, self.query_chunk)
      for a in (query.signs, query.nonzero, codes_lib.pack_bits(query_labels))
    ]
    self.database = [
      hamming.pad_rows(a, self.database_chunk)
      for a in (database.signs, database.nonzero, codes_lib.pack_bits(database_labels))
    ]
    self.static = dict(bits=self.bits, half_units=self.scale == 2)

  def query_chunks(self):
    for q0 in range(0, self.num_queries, self.query_chunk):
      yield q0, [a[q0 : q0 + self.query_chunk] for a in self.query]

  def distance_chunks(self, query):
    """(units, relevant, valid rows) per database chunk, in index order."""
    for d0 in range(0, self.num_database, self.database_chunk):
      units, relevant = _distances_chunk(
        query, [a[d0 : d0 + self.database_chunk] for a in self.database], **self.static
      )
      yield (
        np.asarray(units),
        np.asarray(relevant),
        min(self.database_chunk, self.num_database - d0),
      )

  def histograms(self, chunks):
    """Items and relevant items per bucket, each (query_chunk, buckets)."""
    counts = [np.zeros((self.query_chunk, self.num_buckets), np.int64) for _ in range(2)]
    for units, relevant, num_valid in chunks:
      _count_buckets(units, relevant, num_valid, *counts)
    return counts

  def stable_sums(self, query, window):
    """Stable-order AP terms of a query chunk, and its bucket counts.

    Returns the sums of rank / position over relevant items in the window,
    their number, and the items and relevant items per bucket.
    """
    # One database chunk: keep its distances for the second pass rather
    # than compute them again. More: recompute, so memory stays one chunk.
    if self.database_chunk >= self.num_database:
      chunks = list(self.distance_chunks(query))
      second_pass = chunks
    else:
      chunks = self.distance_chunks(query)
      second_pass = self.distance_chunks(query)
    counts = self.histograms(chunks)
    ranked = [np.cumsum(h, axis=1) - h for h in counts]
    sums = np.zeros(self.query_chunk)
    counted = np.zeros(self.query_chunk, np.int64)
    for units, relevant, num_valid in second_pass:
      _stable_terms(units, relevant, num_valid, *ranked, window, sums, counted)
    return sums, counted, counts


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
  harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n.sum(1).max() + 2))])

  def expected_sum(lower, lower_rel, size, num_rel):
    """E[sum of rank/position] over num_rel relevant items placed uniformly
    at random among positions lower+1 .. lower+size."""
    size = np.maximum(size, 1)
    inv_pos = harmonic[lower + size] - harmonic[lower]
    offsets = size - (lower + 1) * inv_pos  # Sum of (j - 1) / (lower + j).
    pair = np.where(size > 1, (num_rel - 1) / np.maximum(size - 1, 1), 0.0)
    return num_rel / size * ((lower_rel + 1) * inv_pos + pair * offsets)

  full = lower + n <= window
  full_sum = np.where(full & (r > 0), expected_sum(lower, lower_rel, n, r), 0.0).sum(1)
  full_rel = np.where(full, r, 0).sum(1)
  ap = np.where(full_rel > 0, full_sum / np.maximum(full_rel, 1), 0.0)
  # At most one bucket per query straddles the window: average over the
  # hypergeometric number x of its relevant items that fall inside.
  log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n.max() + 1)))])
  cut = (lower < window) & (lower + n > window)
  for q, b in zip(*np.nonzero(cut)):
    size, num_rel, inside = n[q, b], r[q, b], window - lower[q, b]
    x = np.arange(max(0, inside - (size - num_rel)), min(num_rel, inside) + 1)
    log_pmf = (
      log_fact[num_rel]
      - log_fact[x]
      - log_fact[num_rel - x]
      + log_fact[size - num_rel]
      - log_fact[inside - x]
      - log_fact[size - num_rel - inside + x]
      - log_fact[size]
      + log_fact[inside]
      + log_fact[size - inside]
    )
    cut_sum = expected_sum(lower[q, b], lower_rel[q, b], inside, x)
    hits = full_rel[q] + x
    ap[q] = np.sum(
      np.exp(log_pmf) * np.where(hits > 0, (full_sum[q] + cut_sum) / np.maximum(hits, 1), 0.0)
    )
  return ap


def _curves(hist_all, hist_relevant, scale, num_points=64):
  """Radius and top-N curves from bucket counts (tie-independent)."""
  n = np.asarray(hist_all, np.float64)
  r = np.asarray(hist_relevant, np.float64)
  total_rel = r.sum(1)
  has_rel = total_rel > 0
  within_all = np.cumsum(n, 1)
  within_rel = np.cumsum(r, 1)
  precision_radius = np.where(within_all > 0, within_rel / np.maximum(within_all, 1), 0.0)
  recall_radius = within_rel[has_rel] / total_rel[has_rel, None]
  num_database = int(n[0].sum())
  top_n = np.unique(np.round(np.geomspace(1, num_database, num_points))).astype(np.int64)
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
    "radius": (np.arange(n.shape[1]) / scale).tolist(),
    "precision_at_radius": precision_radius.mean(0).tolist(),
    "recall_at_radius": (recall_radius.mean(0) if has_rel.any() else np.zeros(n.shape[1])).tolist(),
    "n": top_n.tolist(),
    "precision_at_n": (rel_top_n / top_n).mean(0).tolist(),
    "recall_at_n": (
      (rel_top_n[has_rel] / total_rel[has_rel, None]).mean(0)
      if has_rel.any()
      else np.zeros(len(top_n))
    ).tolist(),
  }


def _evaluate(
  query_codes,
  database_codes,
  query_labels,
  database_labels,
  topk,
  ties,
  query_chunk,
  database_chunk,
):
  data = _RetrievalSet(
    query_codes, database_codes, query_labels, database_labels, query_chunk, database_chunk
  )
  window = ranking_window(topk, data.num_database, ties)
  hist_all, hist_relevant, ap = [], [], []
  for q0, query in data.query_chunks():
    num = min(data.query_chunk, data.num_queries - q0)
    if ties == "tie_aware":
      counts = data.histograms(data.distance_chunks(query))
      ap.append(tie_aware_ap(*counts, window)[:num])
    else:
      sums, counted, counts = data.stable_sums(query, window)
      ap.append(_stable_ap(sums, counted)[:num])
    hist_all.append(np.asarray(counts[0])[:num])
    hist_relevant.append(np.asarray(counts[1])[:num])
  return (data, window, np.concatenate(ap), np.concatenate(hist_all), np.concatenate(hist_relevant))


def average_precisions(
  query_codes,
  database_codes,
  query_labels,
  database_labels,
  topk=-1,
  ties="stable",
  *,
  query_chunk=64,
  database_chunk=1 << 16,
):
  """AP@topk of every query (float64, (Q,)); see `evaluate_codes`."""
  return _evaluate(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk,
    ties,
    query_chunk,
    database_chunk,
  )[2]


def evaluate_codes(
  query_codes,
  database_codes,
  query_labels,
  database_labels,
  topk=-1,
  ties="stable",
  *,
  query_chunk=64,
  database_chunk=1 << 16,
):
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
      query_chunk x database_chunk x 5 bytes (distances and relevance) per
      step.

  Returns:
    `map` averages AP over all queries (a query with no relevant item in the
    window counts 0); `map_over_queries_with_relevant` averages over queries
    with at least one relevant database item. Curves are tie-independent.
  """
  data, window, ap, hist_all, hist_relevant = _evaluate(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    topk,
    ties,
    query_chunk,
    database_chunk,
  )
  has_relevant = hist_relevant.sum(1) > 0
  curves = _curves(hist_all, hist_relevant, data.scale)
  return {
    "map": float(ap.mean()),
    "map_over_queries_with_relevant": float(ap[has_relevant].mean()) if has_relevant.any() else 0.0,
    "num_queries_with_relevant": int(has_relevant.sum()),
    "topk": int(topk),
    "window": int(window),
    "ties": ties,
    "num_queries": data.num_queries,
    "num_database": data.num_database,
    "bits": data.bits,
    "database_rows_with_zero_bits": data.database_rows_with_zeros,
    # Codes shorter than 2 bits have every item within radius 2.
    "precision_at_radius_2": curves["precision_at_radius"][
      min(2 * data.scale, len(curves["precision_at_radius"]) - 1)
    ],
    "curves": curves,
  }
