"""Image sets to encode (folder, list file, arrays, TFDS) and the generic image_list dataset."""

import importlib.util
import pathlib

import numpy as np
import pytest
from PIL import Image

from schn_jax import errors
from schn_jax.data import build_dataset, default_data_config, image_sets


def write_png(path, value, size=(12, 10), mode="L"):
  path.parent.mkdir(parents=True, exist_ok=True)
  shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
  Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def test_folder_is_sorted_recursive_and_skips_other_files(tmp_path):
  write_png(tmp_path / "b" / "2.png", 20)
  write_png(tmp_path / "a.png", 10)
  write_png(tmp_path / "b" / "10.PNG", 30, mode="RGB")
  write_png(tmp_path / ".hidden" / "x.png", 40)
  (tmp_path / "notes.txt").write_text("not an image")
  images = image_sets.open_images(tmp_path, channels=1)
  assert images.paths.tolist() == ["a.png", "b/10.PNG", "b/2.png"]
  assert images.num_classes == 0 and images.label_names is None
  assert images.image(1).shape == (10, 12, 1) and images.image(1).dtype == np.uint8
  assert image_sets.open_images(tmp_path, channels=3).image(0).shape == (10, 12, 3)
  reopened = image_sets.open_spec(images.spec, channels=1)
  assert reopened.paths.tolist() == images.paths.tolist()


def test_class_folders_label_each_image(tmp_path):
  for name in ("cat/1.png", "dog/2.png", "cat/3.png"):
    write_png(tmp_path / name, 0)
  images = image_sets.open_images(tmp_path, class_folders=True)
  assert images.label_names.tolist() == ["cat", "dog"]
  assert images.paths.tolist() == ["cat/1.png", "cat/3.png", "dog/2.png"]
  np.testing.assert_array_equal(images.labels, [[1, 0], [1, 0], [0, 1]])
  write_png(tmp_path / "loose.png", 0)
  with pytest.raises(errors.UserError, match="loose.png: with class folders"):
    image_sets.open_images(tmp_path, class_folders=True)


def test_list_file_reads_label_count_and_rejects_bad_lines(tmp_path):
  for i in range(3):
    write_png(tmp_path / "img" / f"{i}.png", i)
  (tmp_path / "list.txt").write_text("img/0.png 1 0 0\nimg/1.png 0 1 1\n\nimg/2.png 0 0 1\n")
  images = image_sets.open_images(tmp_path / "list.txt")
  assert images.paths.tolist() == ["img/0.png", "img/1.png", "img/2.png"]
  np.testing.assert_array_equal(images.labels, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
  (tmp_path / "bad.txt").write_text("img/0.png 1 0 0\nimg/1.png 0 1\n")
  with pytest.raises(
    errors.UserError,
    match=r"bad\.txt:2: expected an image path and 3 "
    r"label flags \(as on line 1\), found 2",
  ):
    image_sets.open_images(tmp_path / "bad.txt")
  (tmp_path / "gone.txt").write_text("img/0.png\nimg/9.png\n")
  with pytest.raises(errors.UserError, match=r"gone\.txt:2: .*img/9\.png does not exist"):
    image_sets.open_images(tmp_path / "gone.txt")
  # Paths without flags: no labels.
  (tmp_path / "plain.txt").write_text("img/2.png\nimg/0.png\n")
  plain = image_sets.open_images(tmp_path / "plain.txt", root=tmp_path)
  assert plain.paths.tolist() == ["img/2.png", "img/0.png"] and plain.num_classes == 0


def test_arrays_and_their_errors(tmp_path):
  images = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
  np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 2, 1, 2]))
  arrays = image_sets.open_images(tmp_path / "a.npz", channels=1)
  assert arrays.paths.tolist() == [f"a.npz[{i}]" for i in range(4)]
  np.testing.assert_array_equal(arrays.image(2)[..., 0], images[2])
  np.testing.assert_array_equal(arrays.labels.argmax(1), [0, 2, 1, 2])
  assert image_sets.open_images(tmp_path / "a.npz").image(0).shape == (5, 6, 3)
  np.savez(tmp_path / "b.npz", pictures=images)
  with pytest.raises(errors.UserError, match=r"b\.npz: no `images` array"):
    image_sets.open_images(tmp_path / "b.npz")
  (tmp_path / "c.npz").write_text("text")
  with pytest.raises(errors.UserError, match=r"c\.npz: not an \.npz file"):
    image_sets.open_images(tmp_path / "c.npz")


def test_tfds_split(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    images = image_sets.open_images("tfds:mnist:test", channels=1)
    assert images.paths.tolist() == [f"mnist/test[{i}]" for i in range(5)]
    assert images.num_classes == 10 and images.image(0).shape == (28, 28, 1)
  with pytest.raises(errors.UserError, match="tfds:NAME:SPLIT"):
    image_sets.open_images("tfds:mnist")


def test_generic_image_list_dataset_reads_the_label_count(tmp_path):
  lines = []
  for i in range(30):
    write_png(tmp_path / "images" / f"{i}.png", i, mode="RGB")
    flags = ["1" if j == i % 4 else "0" for j in range(4)]
    lines.append(f"images/{i}.png {' '.join(flags)}")
  (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
  config = default_data_config("image_list")
  config.update(dict(root=str(tmp_path), num_query=6, image_size=8, test_resize=None))
  data = build_dataset(config, str(tmp_path / "work"), seed=0)
  assert data.source.num_classes == 4 and data.labels.shape == (30, 4)
  assert len(data.split.query) == 6 and len(data.split.database) == 24
  config.update(dict(protocol="per_class", query_per_class=2, num_query=None))
  data = build_dataset(config, str(tmp_path / "work2"), seed=0)
  assert len(data.split.query) == 8
  (tmp_path / "images.txt").write_text("\n".join(lines[:3] + ["images/3.png 0 1"]) + "\n")
  with pytest.raises(errors.UserError, match=r"images\.txt:4: expected an image path and 4"):
    build_dataset(config, str(tmp_path / "work3"), seed=0)


def test_worked_example_config_opens_its_dataset(tmp_path):
  """docs/examples/image_list.py (the docs/data.md worked example) on a small list."""
  path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples" / "image_list.py"
  spec = importlib.util.spec_from_file_location("image_list_example", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  lines = []
  for i in range(50):
    write_png(tmp_path / f"{i % 10}" / f"{i}.png", i)
    lines.append(f"{i % 10}/{i}.png " + " ".join("1" if j == i % 10 else "0" for j in range(10)))
  (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
  config.data.root = str(tmp_path)
  config.data.query_per_class = 2
  data = build_dataset(config.data, str(tmp_path / "work"), config.seed)
  assert data.source.num_classes == 10 and len(data.split.query) == 20
  batch = next(data.batches(data.split.query, 20, train=False))
  assert batch["image"].shape == (20, 28, 28, 3)
