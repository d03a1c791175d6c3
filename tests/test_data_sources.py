"""Fashion-MNIST IDX and TFDS sources, and the TFDS preparation command (CIFAR-10's
archive: tests/test_fetch.py)."""

import gzip
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from schn_jax.data import build_dataset, default_data_config, sources

import support


def write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root, sizes=(30, 20)):
  rng = np.random.default_rng(0)
  for (images, labels), n in zip(sources.FASHION_MNIST_FILES, sizes):
    write_idx(root / images, rng.integers(0, 256, (n, 28, 28)))
    write_idx(root / labels, np.arange(n) % 10)


def test_read_idx_round_trip(tmp_path):
  array = np.random.default_rng(1).integers(0, 256, (3, 4, 5)).astype(np.uint8)
  write_idx(tmp_path / "x.gz", array)
  np.testing.assert_array_equal(sources.read_idx(tmp_path / "x.gz"), array)


def test_read_idx_truncated(tmp_path):
  write_idx(tmp_path / "x.gz", np.zeros((3, 4, 5)))
  with gzip.open(tmp_path / "x.gz") as f:
    data = f.read()
  with gzip.open(tmp_path / "x.gz", "wb") as f:
    f.write(data[:-7])
  with pytest.raises(ValueError, match="truncated"):
    sources.read_idx(tmp_path / "x.gz")


def test_fashion_mnist_from_overridden_root(tmp_path):
  fake_fashion_mnist(tmp_path)
  source = sources.fashion_mnist_source(str(tmp_path))
  assert len(source) == 50
  assert source.image(0).shape == (28, 28, 1)
  assert source.image(0).dtype == np.uint8
  # Train first, then test: the 31st image is the first test image.
  np.testing.assert_array_equal(
    source.image(30)[..., 0], sources.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")[0]
  )
  np.testing.assert_array_equal(
    source.labels.argmax(1), np.r_[np.arange(30) % 10, np.arange(20) % 10]
  )
  assert set(np.unique(source.labels)) == {0.0, 1.0}


def test_fashion_mnist_missing_everywhere_says_what_to_install(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    sources.fashion_mnist_source(str(tmp_path / "none"), tfds_data_dir=str(tmp_path / "tfds"))
  message = str(e.value)
  assert "apt-get install dataset-fashion-mnist" in message
  assert (
    f"python -m schn_jax.data.prepare --dataset=fashion_mnist --data_dir={tmp_path / 'tfds'}"
  ) in message


def test_fashion_mnist_falls_back_to_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    source = sources.fashion_mnist_source(str(tmp_path / "none"))
  assert len(source) == 12  # Six per split, train and test.
  assert source.image(0).shape == (28, 28, 1)
  assert source.labels.shape == (12, 10)


@pytest.mark.skipif(
  not pathlib.Path(sources.FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").is_file(),
  reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist(tmp_path):
  config = default_data_config("fashion_mnist")
  data = build_dataset(config, str(tmp_path), seed=999)
  assert len(data.source) == 70_000
  assert data.source.images.shape == (70_000, 28, 28, 1)
  np.testing.assert_array_equal(data.labels.sum(0), np.full(10, 7000))
  assert len(data.split.query) == 1000
  assert len(data.split.database) == 69_000
  np.testing.assert_array_equal(data.labels[data.split.query].sum(0), np.full(10, 100))
  # A T-shirt is not blank: the bytes really are images.
  assert data.source.image(0).std() > 10


def test_tfds_source_reads_images_and_labels_through_data_source(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    source = sources.TfdsSource("cifar10", data_dir=str(tmp_path))
    reference = [tfds.data_source("cifar10", split=s) for s in ("train", "test")]
    expected = [r[i] for r in reference for i in range(5)]
  assert len(source) == 10 and source.num_classes == 10
  for i, example in enumerate(expected):
    np.testing.assert_array_equal(source.image(i), example["image"])
    assert source.image(i).dtype == np.uint8
    assert source.image(i).shape == (32, 32, 3)
    np.testing.assert_array_equal(source.labels[i], np.eye(10)[example["label"]])


def test_tfds_cifar10_dataset_on_mock_tfds(tmp_path):
  config = default_data_config("tfds:cifar10")
  config.update(dict(query_per_class=1, image_size=32, test_resize=32))
  # Mock labels are random: give every class enough images.
  with tfds.testing.mock_data(num_examples=60):
    data = build_dataset(config, str(tmp_path), seed=0)
  assert len(data.split.query) == 10
  assert len(data.split.database) == 110
  batch = next(data.batches(data.split.query, 10, train=False))
  assert batch["image"].shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(batch["image"][0], data.source.image(data.split.query[0]))


def test_unprepared_tfds_names_the_command(tmp_path):
  with pytest.raises(sources.DatasetNotPreparedError) as e:
    sources.TfdsSource("cifar10", data_dir=str(tmp_path))
  assert "is not prepared" in str(e.value)
  assert (f"python -m schn_jax.data.prepare --dataset=cifar10 --data_dir={tmp_path}") in str(
    e.value
  )


def test_data_layer_never_imports_tensorflow():
  code = (
    "import sys, schn_jax.data, tensorflow_datasets as tfds\n"
    "from schn_jax.data import sources\n"
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=support.REPO)


@pytest.mark.skipif(
  importlib.util.find_spec("tensorflow") is not None,
  reason="TensorFlow installed: prepare would download",
)
def test_prepare_without_tensorflow_says_what_to_install():
  result = subprocess.run(
    [sys.executable, "-m", "schn_jax.data.prepare", "--dataset=cifar10"],
    capture_output=True,
    text=True,
    cwd=support.REPO,
  )
  assert result.returncode != 0
  assert "pip install tensorflow-cpu==2.21.0" in result.stderr
