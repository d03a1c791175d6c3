"""Metrics against brute-force NumPy, tie enumeration and the fixtures."""

import itertools

import numpy as np
import pytest

from schn_jax.evaluation import hamming, metrics

FIXTURE_SETS = ("mmasia", "tomm", "multilabel/mmasia", "multilabel/tomm")


def random_set(seed, num_queries, num_database, bits, classes=4, flip=0.3, zero_rows=0):
  """Codes clustered by class, so that distances tie a lot."""
  rng = np.random.default_rng(seed)
  labels = rng.random((num_queries + num_database, classes)) < 0.3
  labels[np.arange(len(labels)), rng.integers(0, classes, len(labels))] = 1
  centers = np.where(rng.random((classes, bits)) < 0.5, -1, 1)
  codes = centers[labels.argmax(1)] * np.where(rng.random((len(labels), bits)) < flip, -1, 1)
  if zero_rows:
    rows = rng.choice(num_database, zero_rows, replace=False) + num_queries
    codes[rows[: zero_rows // 2]] = 0
    codes[rows[zero_rows // 2 :], : bits // 2] = 0  # Partly unset rows.
  return (
    codes[:num_queries],
    codes[num_queries:],
    labels[:num_queries].astype(np.uint8),
    labels[num_queries:].astype(np.uint8),
  )


def brute_distances(query_codes, database_codes):
  bits = query_codes.shape[1]
  return 0.5 * (bits - query_codes.astype(np.float64) @ database_codes.T)


def ap_of_ranking(relevant_in_order):
  hits = np.nonzero(relevant_in_order)[0]
  if not len(hits):
    return 0.0
  return float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))


def brute_ap(query_codes, database_codes, query_labels, database_labels, topk, ties):
  """The reference's per-query loop, with a stable argsort."""
  distances = brute_distances(query_codes, database_codes)
  relevant = query_labels.astype(int) @ database_labels.T > 0
  if ties == "reference":
    window = slice(None, topk)  # topk = -1 drops the last item, as there.
  else:
    window = slice(None, None if topk == -1 else topk)
  return np.array(
    [
      ap_of_ranking(rel[np.argsort(dist, kind="stable")][window])
      for dist, rel in zip(distances, relevant)
    ]
  )


@pytest.mark.parametrize("bits", [12, 13, 32, 48])
@pytest.mark.parametrize("topk", [-1, 1, 37, 300])
@pytest.mark.parametrize("ties", ["stable", "reference"])
def test_stable_and_reference_match_brute_force(bits, topk, ties):
  arrays = random_set(bits, 40, 300, bits, zero_rows=30 if bits == 13 else 0)
  ours = metrics.average_precisions(*arrays, topk=topk, ties=ties)
  np.testing.assert_allclose(ours, brute_ap(*arrays, topk, ties), atol=1e-6)


@pytest.mark.parametrize("ties", ["stable", "reference", "tie_aware"])
def test_chunking_does_not_change_results(ties):
  arrays = random_set(0, 70, 1000, 16, zero_rows=50)
  whole = metrics.average_precisions(*arrays, topk=-1, ties=ties)
  chunked = metrics.average_precisions(
    *arrays, topk=-1, ties=ties, query_chunk=16, database_chunk=256
  )
  np.testing.assert_allclose(chunked, whole, atol=1e-6)
  np.testing.assert_allclose(
    whole,
    metrics.average_precisions(*arrays, topk=-1, ties=ties, query_chunk=3, database_chunk=300),
    atol=1e-6,
  )


def tie_orders(distances):
  """Every ranking consistent with the distances (ties in any order)."""
  for order in itertools.permutations(range(len(distances))):
    if np.all(np.diff(distances[list(order)]) >= 0):
      yield list(order)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("topk", [-1, 1, 2, 3, 4, 5, 7])
def test_tie_aware_is_the_average_over_tie_orders(bits, topk):
  arrays = random_set(bits + 10, 5, 7, bits, classes=3, flip=0.4, zero_rows=2 if bits == 3 else 0)
  distances = brute_distances(*arrays[:2])
  relevant = arrays[2].astype(int) @ arrays[3].T > 0
  window = slice(None, None if topk == -1 else topk)
  expected = [
    np.mean([ap_of_ranking(rel[order][window]) for order in tie_orders(dist)])
    for dist, rel in zip(distances, relevant)
  ]
  ours = metrics.average_precisions(*arrays, topk=topk, ties="tie_aware")
  np.testing.assert_allclose(ours, expected, atol=1e-9)


def test_tie_aware_differs_from_stable_when_ties_matter():
  # Query 0 ties with every item; the relevant item is last by index.
  query = np.ones((1, 4))
  database = np.ones((3, 4))
  query_labels = np.array([[1, 0]])
  database_labels = np.array([[0, 1], [0, 1], [1, 0]])
  args = (query, database, query_labels, database_labels)
  assert metrics.average_precisions(*args, ties="stable")[0] == pytest.approx(1 / 3)
  assert metrics.average_precisions(*args, ties="tie_aware")[0] == (
    pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
  )


def test_zero_codes_sit_at_half_the_code_length():
  query = np.array([[1, -1, 1, 1, -1]])
  database = np.array([[0, 0, 0, 0, 0], [1, 0, 0, -1, -1], [1, -1, 1, 1, 1]])
  np.testing.assert_array_equal(hamming.hamming_distances(query, database), [[2.5, 2.0, 1.0]])
  labels = np.ones((3, 1))
  ap = metrics.average_precisions(query, database, labels[:1], labels)
  assert ap[0] == pytest.approx(1.0)


@pytest.mark.parametrize("bits", [12, 13, 32])
def test_curves_match_brute_force(bits):
  arrays = random_set(bits, 30, 200, bits, zero_rows=20 if bits == 13 else 0)
  result = metrics.evaluate_codes(*arrays)
  curves = result["curves"]
  distances = brute_distances(*arrays[:2])
  relevant = arrays[2].astype(int) @ arrays[3].T > 0
  has_relevant = relevant.any(1)
  for radius, precision, recall in zip(
    curves["radius"], curves["precision_at_radius"], curves["recall_at_radius"]
  ):
    inside = distances <= radius
    hits = (inside & relevant).sum(1)
    expected = np.where(inside.sum(1) > 0, hits / np.maximum(inside.sum(1), 1), 0)
    assert precision == pytest.approx(expected.mean(), abs=1e-9)
    assert recall == pytest.approx(
      (hits / np.maximum(relevant.sum(1), 1))[has_relevant].mean(), abs=1e-9
    )
  assert result["precision_at_radius_2"] == pytest.approx(
    curves["precision_at_radius"][curves["radius"].index(2.0)]
  )
  # Expected P@N over tie orders: all of a tie group's relevant items spread
  # evenly over its positions.
  order_stats = []
  for dist, rel in zip(distances, relevant):
    order = np.argsort(dist, kind="stable")
    sorted_dist, sorted_rel = dist[order], rel[order].astype(float)
    for value in np.unique(sorted_dist):
      group = sorted_dist == value
      sorted_rel[group] = sorted_rel[group].mean()
    order_stats.append(np.cumsum(sorted_rel))
  rel_top = np.array(order_stats)[:, np.array(curves["n"]) - 1]
  np.testing.assert_allclose(
    curves["precision_at_n"], (rel_top / np.array(curves["n"])).mean(0), atol=1e-6
  )
  np.testing.assert_allclose(
    curves["recall_at_n"],
    (rel_top[has_relevant] / relevant.sum(1)[has_relevant, None]).mean(0),
    atol=1e-9,
  )


def test_map_over_queries_with_relevant_items():
  arrays = list(random_set(3, 20, 100, 16))
  arrays[2][:5] = 0  # Five queries without labels have no relevant item.
  result = metrics.evaluate_codes(*arrays)
  ap = brute_ap(*arrays, -1, "stable")
  assert result["num_queries_with_relevant"] == 15
  assert result["map"] == pytest.approx(ap.mean(), abs=1e-6)
  assert result["map_over_queries_with_relevant"] == pytest.approx(ap[5:].mean(), abs=1e-6)


@pytest.mark.parametrize("fixture_set", FIXTURE_SETS)
@pytest.mark.parametrize("tag,topk", [("all", -1), ("top500", 500)])
def test_fixtures(fixtures_root, fixture_set, tag, topk):
  data = np.load(fixtures_root / fixture_set / "map.npz")
  arrays = (data["query_codes"], data["db_codes"], data["query_labels"], data["db_labels"])
  stable = metrics.evaluate_codes(*arrays, topk=topk)
  assert stable["map"] == pytest.approx(float(data[f"map_stable_{tag}"]), abs=1e-6)
  assert stable["num_queries_with_relevant"] == (50 - int(data["n_zero_relevant_queries"]))
  np.testing.assert_allclose(
    metrics.average_precisions(*arrays, topk=topk), data[f"ap_stable_per_query_{tag}"], atol=1e-6
  )
  reference = metrics.evaluate_codes(*arrays, topk=topk, ties="reference")
  assert reference["map"] == pytest.approx(float(data[f"map_stable_refslice_{tag}"]), abs=1e-6)
