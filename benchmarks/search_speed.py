"""Search speed and recall of each FAISS binary index kind against IndexBinaryFlat.

    python -m benchmarks.search_speed [--num_database=1000000] [--num_queries=1000]

Database and queries are uniformly random 64-bit codes (queries drawn apart
from the database), searched through `schn_jax.evaluation.indexes` (what the
search command runs, re-sorting of ties included). For each index and
search-time setting: build seconds (training included), queries per second
(one batch of all queries, FAISS's OpenMP threads), and two recalls against
the flat index's exact top 10:
  recall@10       |returned ids & exact ids| / 10, per query, averaged;
  dist-recall@10  the share of ranks whose distance equals the exact one: 1.0
                  for an index that is exact up to which tied items it keeps
                  (random 64-bit codes tie a lot at their 10th distance).
Uniform random codes are the hard case for bucket indexes: a query's nearest
neighbours are ~14 bits away, far outside small hash radii; learned codes of
similar images cluster much more.
"""

import os
import time

import faiss
import numpy as np
from absl import app, flags

from schn_jax.evaluation import indexes

_NUM_DATABASE = flags.DEFINE_integer("num_database", 1_000_000, "Database codes.")
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 1000, "Query codes.")
_BITS = flags.DEFINE_integer("bits", 64, "Code length.")
_K = 10

# (description, [search-time settings]) measured in this order.
INDEXES = (
  ("flat", [{}]),
  ("BHash16", [{"nflip": 0}, {"nflip": 2}, {"nflip": 4}]),
  ("BHash4x16", [{"nflip": 0}, {"nflip": 1}, {"nflip": 2}]),
  ("BIVF1024", [{"nprobe": 1}, {"nprobe": 16}, {"nprobe": 64}]),
  ("BHNSW32", [{"ef_search": 16}, {"ef_search": 64}, {"ef_search": 256}]),
)


def random_codes(rng, num, bits):
  return np.where(rng.random((num, bits), np.float32) < 0.5, -1, 1).astype(np.int8)


def recalls(results, exact_ids, exact_distances):
  id_recall, distance_recall = [], []
  for (ids, distances), true_ids, true_distances in zip(results, exact_ids, exact_distances):
    id_recall.append(len(set(ids.tolist()) & set(true_ids.tolist())) / _K)
    padded = np.full(_K, -1)
    padded[: len(distances)] = distances
    distance_recall.append(np.mean(padded == true_distances))
  return float(np.mean(id_recall)), float(np.mean(distance_recall))


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  database = random_codes(rng, _NUM_DATABASE.value, _BITS.value)
  queries = random_codes(rng, _NUM_QUERIES.value, _BITS.value)
  print(
    f"{_NUM_DATABASE.value:,} database x {_NUM_QUERIES.value:,} queries, "
    f"{_BITS.value}-bit random codes, k={_K}; {os.cpu_count()} CPUs, FAISS "
    f"{faiss.__version__} with {faiss.omp_get_max_threads()} threads, load "
    f"average {os.getloadavg()[0]:.1f}"
  )
  print(f"| index | setting | build s | queries/s | recall@{_K} | dist-recall@{_K} |")
  print("|---|---|---|---|---|---|")
  exact = None
  for description, settings in INDEXES:
    started = time.perf_counter()
    index = indexes.build_index(database, description)
    build_seconds = time.perf_counter() - started
    for setting in settings:
      indexes.set_search_parameters(index, **setting)
      indexes.knn(index, queries[:10], _K)  # warm-up: threads, first-touch pages
      started = time.perf_counter()
      results = indexes.knn(index, queries, _K)
      seconds = time.perf_counter() - started
      if exact is None:
        exact = (
          np.stack([ids for ids, _ in results]),
          np.stack([distances for _, distances in results]),
        )
      id_recall, distance_recall = recalls(results, *exact)
      name = ", ".join(f"{k}={v}" for k, v in setting.items()) or "-"
      print(
        f"| {description} | {name} | {build_seconds:.1f} | "
        f"{len(queries) / seconds:,.0f} | {id_recall:.3f} | "
        f"{distance_recall:.3f} |",
        flush=True,
      )
    del index


if __name__ == "__main__":
  app.run(main)
