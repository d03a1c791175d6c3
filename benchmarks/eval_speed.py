"""Speed and peak memory of evaluation and search, ours vs straightforward.

  python -m benchmarks.eval_speed [--scale 0.1] [--part map|topk]

(1) mAP@all, 1,000 queries x 59,000 database codes, 32 bits (CIFAR-10
sized, codes clustered by class so distances tie): evaluate_codes in each tie
mode vs a per-query NumPy argsort loop like the reference's. (2) top-100 of
10,000 queries over 1,000,000 64-bit codes: an exact top-k in JAX
(`jax_topk`, chunked packed distances and lax.top_k) vs FAISS IndexBinaryFlat, the
library's search (benchmarks/jax_topk.py); both print the mean distance of
the results, which must agree. Every measurement runs in a fresh process, so
peak RSS is its own; 'first' includes JAX compilation, 'second' does not. Numba keeps
its compiled loops in __pycache__, so 'first' of the mAP rows loads them;
map_stable_uncached gives Numba an empty cache to show the one-off
compilation.
--scale shrinks the query counts for a quick look.
"""

import argparse
import multiprocessing
import os
import resource
import tempfile
import time

import numpy as np
import psutil


def clustered_set(num_queries, num_database, bits, classes, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, num_queries + num_database)
  centers = np.where(rng.random((classes, bits)) < 0.5, -1, 1)
  codes = (centers[labels] * np.where(rng.random((len(labels), bits)) < 0.2, -1, 1)).astype(np.int8)
  onehot = np.eye(classes, dtype=np.uint8)[labels]
  return (codes[:num_queries], codes[num_queries:], onehot[:num_queries], onehot[num_queries:])


def numpy_map(query_codes, database_codes, query_labels, database_labels):
  """The reference's loop in NumPy, with exact top-all (no [:-1])."""
  bits = query_codes.shape[1]
  database = database_codes.astype(np.float32)
  total = 0.0
  for code, labels in zip(query_codes.astype(np.float32), query_labels):
    relevant = database_labels @ labels > 0
    order = np.argsort(0.5 * (bits - database @ code))
    hits = np.nonzero(relevant[order])[0] + 1.0
    if len(hits):
      total += np.mean(np.arange(1, len(hits) + 1) / hits)
  return total / len(query_codes)


def measure(task, num_queries):
  """Runs in a child process: (result, first s, second s, peak RSS MiB)."""
  if task.endswith("_uncached"):
    # Numba reads this at import, which has not happened in this process.
    with tempfile.TemporaryDirectory() as cache:
      os.environ["NUMBA_CACHE_DIR"] = cache
      return measure(task[: -len("_uncached")], num_queries)
  if task.startswith("map"):
    arrays = clustered_set(num_queries, 59_000, 32, 10)
  else:
    rng = np.random.default_rng(1)
    database = np.where(rng.random((1_000_000, 64)) < 0.5, -1, 1).astype(np.int8)
    arrays = (database[rng.integers(0, len(database), num_queries)], database)
  setup_rss = psutil.Process().memory_info().rss / 2**20
  if task == "map_numpy":
    run = lambda: numpy_map(*arrays)
  elif task.startswith("map_"):
    from schn_jax.evaluation import metrics

    ties = task[len("map_") :]
    run = lambda: metrics.evaluate_codes(*arrays, ties=ties)["map"]
  elif task == "topk_jax":
    from benchmarks.jax_topk import jax_topk

    run = lambda: jax_topk(*arrays, 100)[1].mean()
  else:
    from schn_jax.evaluation import indexes

    index = indexes.build_index(arrays[1])
    run = lambda: np.mean([d.mean() for _, d in indexes.knn(index, arrays[0], 100)])
  times = []
  for _ in range(1 if task in ("map_numpy", "topk_faiss") else 2):
    start = time.perf_counter()
    result = run()
    times.append(time.perf_counter() - start)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return float(result), times[0], times[-1], peak, setup_rss


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--part", choices=("all", "map", "topk"), default="all")
  args = parser.parse_args()
  context = multiprocessing.get_context("spawn")
  print(f"{psutil.cpu_count()} CPUs, load average {psutil.getloadavg()}")
  sections = [
    (
      "(1) mAP@all, 59,000 x 32-bit database",
      int(1000 * args.scale),
      ["map_numpy", "map_stable", "map_reference", "map_tie_aware", "map_stable_uncached"],
    ),
    (
      "(2) top-100, 1,000,000 x 64-bit database",
      int(10_000 * args.scale),
      ["topk_faiss", "topk_jax"],
    ),
  ]
  for title, num_queries, tasks in sections:
    if args.part != "all" and not tasks[0].startswith(args.part):
      continue
    print(f"\n{title}, {num_queries} queries")
    print(
      f"{'method':20s} {'value':>10s} {'first s':>9s} {'second s':>9s} "
      f"{'peak RSS MiB':>13s} {'setup RSS':>10s} {'speed-up':>9s}"
    )
    baseline, values = None, []
    for task in tasks:
      with context.Pool(1) as pool:
        value, first, second, peak, setup = pool.apply(measure, (task, num_queries))
      values.append(value)
      baseline = baseline or second
      print(
        f"{task:20s} {value:10.6f} {first:9.3f} {second:9.3f} "
        f"{peak:13.0f} {setup:10.0f} {baseline / second:8.1f}x"
      )
    if tasks[0].startswith("topk") and not np.isclose(values[0], values[1], rtol=1e-6):
      raise SystemExit(f"the exact searches disagree: mean distances {values}")


if __name__ == "__main__":
  main()
