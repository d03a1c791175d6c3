"""Query / train / database splits of every protocol."""

import numpy as np
import pytest

from schn_jax.data import default_data_config, protocols


def single_label(per_class, num_classes=10):
  return np.eye(num_classes, dtype=np.float32)[
    np.random.default_rng(0).permutation(np.repeat(np.arange(num_classes), per_class))
  ]


def multi_label(n, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, num_classes)) < 0.15).astype(np.float32)
  labels[np.arange(n), rng.integers(0, num_classes, n)] = 1
  return labels


def assert_valid(split, labels):
  assert not np.intersect1d(split.query, split.database).size
  assert set(split.train) <= set(split.database)
  for part in (split.query, split.database, split.train):
    assert len(np.unique(part)) == len(part)
    assert part.dtype == np.int64


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_single_label_standard_sizes(name):
  per_class = 6000 if name == "cifar10" else 7000
  labels = single_label(per_class)
  split = protocols.make_split(default_data_config(name), labels, seed=999)
  assert len(split.query) == 1000
  assert len(split.database) == 10 * per_class - 1000  # 59,000 / 69,000.
  np.testing.assert_array_equal(labels[split.query].sum(0), np.full(10, 100))
  np.testing.assert_array_equal(split.train, split.database)
  assert_valid(split, labels)


def test_nuswide_standard_sizes():
  labels = multi_label(195_834, 21)
  split = protocols.make_split(default_data_config("nuswide"), labels, 999)
  assert len(split.query) == 2100
  assert len(split.database) == 195_834 - 2100  # 193,734.
  assert len(split.train) == 10_500
  assert_valid(split, labels)
  # Every label has at least its 100 queries (images drawn for other labels
  # may carry it too).
  assert (labels[split.query].sum(0) >= 100).all()
  assert (labels[split.train].sum(0) >= 500).all()


def test_per_class_draws_label_by_label():
  labels = multi_label(3000, 5)
  config = default_data_config("nuswide")
  config.update(dict(query_per_class=7, train_per_class=11))
  split = protocols.make_split(config, labels, seed=3)
  assert len(split.query) == 35 and len(split.train) == 55
  # Pins the convention: label by label, among images not drawn yet.
  rng = np.random.default_rng(3)
  available = np.ones(3000, bool)
  expected = []
  for label in range(5):
    pool = np.flatnonzero(available & (labels[:, label] > 0))
    pick = rng.choice(pool, 7, replace=False)
    available[pick] = False
    expected.append(pick)
  np.testing.assert_array_equal(split.query, np.sort(np.concatenate(expected)))


def test_flickr_standard_sizes():
  labels = multi_label(25_000, 38)
  split = protocols.make_split(default_data_config("flickr25k"), labels, 999)
  assert (len(split.query), len(split.database), len(split.train)) == (1000, 24_000, 5000)
  assert_valid(split, labels)


def test_configurable_tiny_sizes_and_database_subset():
  labels = single_label(20)
  config = default_data_config("cifar10")
  config.update(dict(query_per_class=2, num_database=50, num_train=30))
  split = protocols.make_split(config, labels, seed=0)
  assert (len(split.query), len(split.database), len(split.train)) == (20, 50, 30)
  np.testing.assert_array_equal(labels[split.query].sum(0), np.full(10, 2))
  assert_valid(split, labels)


def test_too_few_images_for_a_class():
  labels = single_label(3)
  config = default_data_config("cifar10")
  config.query_per_class = 4
  with pytest.raises(ValueError, match="label 0 has 3 images left"):
    protocols.make_split(config, labels, seed=0)


def test_seed_fixes_the_split():
  labels = multi_label(2000, 38)
  config = default_data_config("flickr25k")
  config.update(dict(num_query=50, num_train=100))
  a = protocols.make_split(config, labels, seed=1)
  b = protocols.make_split(config, labels, seed=1)
  c = protocols.make_split(config, labels, seed=2)
  for part in ("query", "database", "train"):
    np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
  assert not np.array_equal(a.query, c.query)
  assert not np.array_equal(a.train, c.train)


def test_check_split_rejects_overlap():
  split = protocols.Split(np.array([1, 2]), np.array([2, 3, 4]), np.array([3]))
  with pytest.raises(ValueError, match="query and database share 1 images"):
    protocols.check_split(split, 5, train_in_database=True)
  split = protocols.Split(np.array([1]), np.array([2, 3]), np.array([4]))
  with pytest.raises(ValueError, match="train holds images outside"):
    protocols.check_split(split, 5, train_in_database=True)


def test_saved_split_round_trip(tmp_path):
  labels = single_label(20)
  config = default_data_config("cifar10")
  config.query_per_class = 2
  saved = protocols.load_or_make_split(tmp_path, config, labels, 5, "cifar10")
  assert (tmp_path / protocols.SPLIT_FILE).is_file()
  # A saved split wins over recomputation: plant a different valid split.
  planted = protocols.Split(np.arange(3), np.arange(3, 200), np.arange(3, 9))
  protocols.save_split(
    tmp_path / protocols.SPLIT_FILE, planted, protocols.split_identity(config, labels, 5, "cifar10")
  )
  loaded = protocols.load_or_make_split(tmp_path, config, labels, 5, "cifar10")
  np.testing.assert_array_equal(loaded.query, planted.query)
  np.testing.assert_array_equal(loaded.train, planted.train)
  assert not np.array_equal(loaded.query, saved.query)


@pytest.mark.parametrize("change", ["seed", "config", "labels", "dataset"])
def test_saved_split_mismatch(tmp_path, change):
  labels = single_label(20)
  config = default_data_config("cifar10")
  config.query_per_class = 2
  protocols.load_or_make_split(tmp_path, config, labels, 5, "cifar10")
  seed, dataset = 5, "cifar10"
  if change == "seed":
    seed, expected = 6, "seed: saved 5 != current 6"
  elif change == "config":
    config.query_per_class, expected = 3, "query_per_class: saved 2"
  elif change == "labels":
    labels = labels.copy()
    labels[0] = np.roll(labels[0], 1)
    expected = "labels_sha1"
  else:
    dataset, expected = "fashion_mnist", "dataset: saved 'cifar10'"
  with pytest.raises(ValueError, match="computed for another dataset") as e:
    protocols.load_or_make_split(tmp_path, config, labels, seed, dataset)
  assert expected in str(e.value)
