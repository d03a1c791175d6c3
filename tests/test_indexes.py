"""FAISS binary indexes against the exact ranking (a stable sort of every distance)."""

import numpy as np
import pytest

from schn_jax import errors
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import indexes

import support


def random_codes(num, bits, seed):
  return np.where(np.random.default_rng(seed).random((num, bits)) < 0.5, -1.0, 1.0)


def brute_distances(query_codes, database_codes):
  bits = query_codes.shape[1]
  return np.rint(0.5 * (bits - query_codes @ database_codes.T)).astype(np.int64)


def stack(results):
  return (np.stack([ids for ids, _ in results]), np.stack([distances for _, distances in results]))


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_flat_equals_exact_ranking_ties_included(tmp_path, bits):
  # 12 bits over 2,000 items: every distance is shared by many items, so the
  # boundary of the top 25 cuts through ties.
  database, queries = random_codes(2000, bits, 0), random_codes(20, bits, 1)
  index = indexes.build_index(database, "flat")
  indexes.save_index(index, tmp_path / "flat.faiss", database)
  loaded = indexes.load_index(tmp_path / "flat.faiss", database)
  ids, distances = stack(indexes.knn(loaded, queries, 25))
  exact_ids, exact_distances = support.exact_topk(queries, database, 25)
  np.testing.assert_array_equal(ids, exact_ids)
  np.testing.assert_array_equal(distances, exact_distances)


@pytest.mark.parametrize(
  "description, params",
  [
    ("BIVF8", dict(nprobe=8)),  # every list visited: exhaustive
    ("BHNSW16", dict(ef_search=2000)),  # a candidate list as large as the database
  ],
)
def test_approximate_indexes_made_exhaustive_match_exact_distances(description, params):
  database, queries = random_codes(2000, 16, 2), random_codes(20, 16, 3)
  index = indexes.build_index(database, description)
  indexes.set_search_parameters(index, **params)
  results = indexes.knn(index, queries, 10)
  ids, distances = stack(results)
  exact_ids, exact_distances = support.exact_topk(queries, database, 10)
  np.testing.assert_array_equal(distances, exact_distances)
  np.testing.assert_array_equal(
    distances, np.take_along_axis(brute_distances(queries, database), ids, 1)
  )
  for row_ids, row_distances, exact in zip(ids, distances, exact_ids):
    # Ties at the k-th distance may keep other items; everything closer is the same.
    closer = row_distances < row_distances[-1]
    assert set(row_ids[closer]) == set(exact[closer])
    assert np.all(np.diff(row_distances) >= 0)
    tied = row_distances[:-1] == row_distances[1:]
    assert np.all(row_ids[:-1][tied] < row_ids[1:][tied])  # ties by database order


@pytest.mark.parametrize(
  "description, nflip", [("flat", None), ("BHash8", 3), ("BHash2x8", 3), ("BIVF4", None)]
)
def test_radius_search_returns_exactly_the_ball(description, nflip):
  database, queries = random_codes(1000, 16, 4), random_codes(10, 16, 5)
  index = indexes.build_index(database, description)
  if nflip is not None:
    # Every code within radius 3 has a prefix within 3 flips of the query's.
    indexes.set_search_parameters(index, nflip=nflip)
  if description == "BIVF4":
    indexes.set_search_parameters(index, nprobe=4)
  brute = brute_distances(queries, database)
  for q, (ids, distances) in enumerate(indexes.range_search(index, queries, 3)):
    expected = np.flatnonzero(brute[q] <= 3)
    expected = expected[np.lexsort((expected, brute[q, expected]))]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(distances, brute[q, expected])


def test_hash_index_misses_are_dropped_not_padded():
  database, queries = random_codes(300, 16, 6), random_codes(6, 16, 7)
  results = indexes.knn(indexes.build_index(database, "BHash16"), queries, 5)
  brute = brute_distances(queries, database)
  for q, (ids, distances) in enumerate(results):
    assert len(ids) <= 5 and (ids >= 0).all()
    np.testing.assert_array_equal(distances, brute[q, ids])


def test_k_larger_than_the_database_is_clipped(caplog):
  database, queries = random_codes(7, 16, 8), random_codes(2, 16, 9)
  ids, distances = stack(indexes.knn(indexes.build_index(database), queries, 50))
  assert ids.shape == (2, 7) and set(ids[0]) == set(range(7))
  assert distances.max() <= 16
  assert "k=50 is more than the 7 database items" in caplog.text


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda index, q: indexes.knn(index, q, 0), r"k=0: ask for at least one"),
    (lambda index, q: indexes.range_search(index, q, -1), r"radius=-1"),
    (
      lambda index, q: indexes.knn(index, q[:, :8], 3),
      r"query codes have 8 bits but the index holds 16-bit codes",
    ),
    (
      lambda index, q: indexes.check_index(index, 40, 24),
      r"holds 16-bit codes but the codes have 24 bits",
    ),
    (
      lambda index, q: indexes.check_index(index, 41, 16),
      r"holds 40 codes but the database has 41",
    ),
    (lambda index, q: indexes.set_search_parameters(index, nprobe=4), r"nprobe applies to IVF"),
  ],
)
def test_bad_requests_are_user_errors(call, message):
  index = indexes.build_index(random_codes(40, 16, 10))
  with pytest.raises(errors.UserError, match=message):
    call(index, random_codes(3, 16, 11))


def test_bad_index_descriptions_and_files(tmp_path):
  codes = random_codes(40, 16, 12)
  with pytest.raises(indexes.SearchError, match=r"index 'BNonsense'.*BHash16"):
    indexes.build_index(codes, "BNonsense")
  with pytest.raises(indexes.SearchError, match="only 40 codes"):
    indexes.build_index(codes, "BIVF64")
  with pytest.raises(indexes.SearchError, match="IndexBinaryHNSW has no radius search"):
    indexes.range_search(indexes.build_index(codes, "BHNSW8"), codes, 2)
  (tmp_path / "junk.faiss").write_bytes(b"not an index")
  with pytest.raises(indexes.SearchError, match="not a FAISS binary index"):
    indexes.load_index(tmp_path / "junk.faiss", codes)
  with pytest.raises(indexes.SearchError, match="no such index file"):
    indexes.load_index(tmp_path / "missing.faiss", codes)
  zeros = codes.copy()
  zeros[5, 2] = 0
  with pytest.raises(indexes.SearchError, match="row 5"):
    indexes.build_index(zeros)


def test_packing_is_faiss_layout():
  codes = random_codes(5, 12, 13)
  packed = codes_lib.pack_signs(codes)
  assert packed.shape == (5, 2) and packed.dtype == np.uint8
  bits = np.unpackbits(packed, axis=1, bitorder="little")
  np.testing.assert_array_equal(bits[:, :12], codes > 0)
  assert not bits[:, 12:].any()


def test_item_codes_round_trip_and_refusals(tmp_path):
  codes = random_codes(4, 16, 14)
  item = codes_lib.ItemCodes(
    codes,
    codes_lib.pack_signs(codes),
    np.array(["a.png", "b/c.png", "d.png", "e.png"]),
    np.eye(4, 2, dtype=np.uint8),
    np.array(["x", "y"]),
    {"kind": "folder", "root": "/r"},
    {"bits": 16},
  )
  codes_lib.save_item_codes(tmp_path / "c.npz", item)
  loaded = codes_lib.load_item_codes(tmp_path / "c.npz")
  np.testing.assert_array_equal(loaded.codes, codes)
  assert loaded.codes.dtype == np.float32 and loaded.bits == 16
  np.testing.assert_array_equal(loaded.paths, item.paths)
  assert loaded.source == item.source and loaded.model == item.model
  (tmp_path / "bad.npz").write_text("hello")
  with pytest.raises(codes_lib.CodesError, match="bad.npz: not an .npz file"):
    codes_lib.load_item_codes(tmp_path / "bad.npz")
  np.savez(tmp_path / "nokey.npz", paths=item.paths)
  with pytest.raises(codes_lib.CodesError, match=r"missing key\(s\) \['codes'\]"):
    codes_lib.load_item_codes(tmp_path / "nokey.npz")


def test_a_saved_index_refuses_other_codes_of_the_same_size(tmp_path):
  codes, other = random_codes(40, 16, 20), random_codes(40, 16, 21)
  indexes.save_index(indexes.build_index(codes), tmp_path / "db.faiss", codes)
  assert indexes.load_index(tmp_path / "db.faiss", codes).ntotal == 40
  with pytest.raises(indexes.SearchError, match="not built from these database codes"):
    indexes.load_index(tmp_path / "db.faiss", other)
  (tmp_path / "db.faiss.codes.json").unlink()
  with pytest.raises(indexes.SearchError, match="not built from these database codes"):
    indexes.load_index(tmp_path / "db.faiss", codes)
