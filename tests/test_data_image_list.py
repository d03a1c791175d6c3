"""Image-list datasets on a generated folder of small JPEGs."""

import logging

import numpy as np
import pytest
from PIL import Image

from schn_jax.data import build_dataset, default_data_config, image_list

NUM_CLASSES = 21


def write_jpeg(path, seed, size=(40, 30)):
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3))
  Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


def flags(labels):
  return " ".join("1" if i in labels else "0" for i in range(NUM_CLASSES))


@pytest.fixture
def root(tmp_path):
  """24 images, image i labelled with i % 21 (and 0 for every third)."""
  lines = []
  for i in range(24):
    write_jpeg(tmp_path / "images" / f"{i}.jpg", seed=i)
    labels = {i % NUM_CLASSES} | ({0} if i % 3 == 0 else set())
    lines.append(f"images/{i}.jpg {flags(labels)}")
  (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
  return tmp_path


def open_nuswide(root, **kwargs):
  kwargs.setdefault("unlabeled", "fail")
  return image_list.ImageListSource("nuswide", str(root), ["images.txt"], NUM_CLASSES, **kwargs)


def append_line(root, line, name="images.txt"):
  with open(root / name, "a") as f:
    f.write(line + "\n")


def test_reads_images_and_labels(root):
  source = open_nuswide(root)
  assert len(source) == 24
  assert source.labels.shape == (24, NUM_CLASSES)
  assert source.labels[22].nonzero()[0].tolist() == [1]
  assert source.labels[3].nonzero()[0].tolist() == [0, 3]
  image = source.image(5)
  assert image.dtype == np.uint8 and image.shape == (30, 40, 3)
  with Image.open(root / "images" / "5.jpg") as expected:
    np.testing.assert_array_equal(image, np.asarray(expected))


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match="--config.data.root"):
    open_nuswide(tmp_path / "nowhere")


def test_missing_list_file(root):
  with pytest.raises(FileNotFoundError, match=r"list file .*other\.txt"):
    image_list.ImageListSource("coco", str(root), ["other.txt"], NUM_CLASSES)


def test_missing_image_is_named(root):
  append_line(root, f"images/gone.jpg {flags({2})}")
  with pytest.raises(FileNotFoundError) as e:
    open_nuswide(root)
  assert "images/gone.jpg" in str(e.value)
  assert "images.txt:25" in str(e.value)


def test_wrong_number_of_flags_names_file_and_line(root):
  append_line(root, "images/0.jpg 0 1 0")
  with pytest.raises(
    ValueError,
    match=r"images\.txt:25: expected an image "
    r"path and 21 label flags, found 3",
  ):
    open_nuswide(root)


def test_flags_must_be_binary(root):
  append_line(root, f"images/0.jpg 2 {flags({1})[2:]}")
  with pytest.raises(ValueError, match=r"images\.txt:25: .* 0 or 1, found '2'"):
    open_nuswide(root)


def test_unlabeled_fail_drop_keep(root, caplog):
  write_jpeg(root / "images" / "x.jpg", seed=99)
  append_line(root, f"images/x.jpg {flags(set())}")
  with pytest.raises(
    ValueError,
    match=r"images\.txt:25: image has no "
    "positive label",
  ):
    open_nuswide(root, unlabeled="fail")
  with caplog.at_level(logging.WARNING):
    dropped = open_nuswide(root, unlabeled="drop")
  assert len(dropped) == 24 and dropped.num_unlabeled == 1
  assert "1 list lines have no positive label (dropped)" in caplog.text
  kept = open_nuswide(root, unlabeled="keep")
  assert len(kept) == 25 and kept.labels[24].sum() == 0


def test_same_image_with_different_labels(root):
  append_line(root, f"images/0.jpg {flags({5})}")
  with pytest.raises(
    ValueError,
    match=r"images\.txt:25: labels of "
    r"images/0\.jpg differ from those at .*images\.txt:1",
  ):
    open_nuswide(root)


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 3])


def test_corrupt_jpeg_fail_names_file(root):
  truncate(root / "images" / "7.jpg")
  source = open_nuswide(root, on_corrupt="fail")
  with pytest.raises(image_list.CorruptImageError, match=r"images/7\.jpg"):
    source.image(7)


def test_corrupt_images_are_left_out_of_the_split(root, tmp_path, caplog):
  truncate(root / "images" / "7.jpg")
  (root / "images" / "8.jpg").write_bytes(b"not a jpeg at all")
  config = default_data_config("nuswide")
  config.update(
    dict(
      root=str(root),
      on_corrupt="skip",
      protocol="random",
      num_query=4,
      query_per_class=None,
      train_per_class=None,
      image_size=16,
      test_resize=16,
    )
  )
  with caplog.at_level(logging.WARNING):
    data = build_dataset(config, str(tmp_path / "work"), seed=0)
  assert "2 of 24 images cannot be decoded and are left out" in caplog.text
  assert "7.jpg" in caplog.text and "8.jpg" in caplog.text
  split = data.split
  everything = np.concatenate([split.query, split.database, split.train])
  assert not {7, 8} & set(everything.tolist())
  assert len(split.query) + len(split.database) == 22
  # Every batch of the database decodes, so no image is served as a stand-in.
  for batch in data.batches(split.database, 8, train=False):
    assert batch["image"].shape[1:] == (16, 16, 3)
  # The saved split is reused without decoding the images again.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    again = build_dataset(config, str(tmp_path / "work"), seed=0)
  np.testing.assert_array_equal(again.split.database, split.database)
  assert "cannot be decoded" not in caplog.text


def test_two_spellings_of_one_path_are_one_image(root):
  append_line(root, f"./images/0.jpg {flags({0})}")
  append_line(root, f"images/./sub/../1.jpg {flags({1})}")
  source = open_nuswide(root)
  assert len(source) == 24
  assert source.paths[0] == "images/0.jpg"


@pytest.mark.parametrize("path", ["../outside.jpg", "images/../../x.jpg", "/etc/passwd"])
def test_paths_outside_the_root_are_refused(root, path):
  append_line(root, f"{path} {flags({2})}")
  with pytest.raises(
    ValueError,
    match=r"images\.txt:25: image path .* "
    "leads outside the dataset root",
  ):
    open_nuswide(root)


def test_sixteen_bit_png_is_scaled_not_clipped(root):
  pixels = np.array([[0, 257 * 128], [65535, 257 * 64]], np.uint16)
  Image.fromarray(pixels).save(root / "images" / "deep.png")
  append_line(root, f"images/deep.png {flags({4})}")
  image = open_nuswide(root).image(24)
  assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
  np.testing.assert_array_equal(image[..., 0], [[0, 128], [255, 64]])
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def write_hashnet_lists(root, test, database, train):
  for name, ids in (("test.txt", test), ("database.txt", database), ("train.txt", train)):
    (root / name).write_text("".join(f"images/{i}.jpg {flags({i % NUM_CLASSES})}\n" for i in ids))


def test_list_protocol_sees_overlap_through_path_spellings(root, tmp_path):
  write_hashnet_lists(root, test=range(4), database=range(4, 24), train=range(10, 16))
  append_line(root, f"./images/0.jpg {flags({0})}", name="database.txt")
  config = default_data_config("nuswide")
  config.update(dict(root=str(root), protocol="lists"))
  with pytest.raises(ValueError, match="query and database share 1 images"):
    build_dataset(config, str(tmp_path / "work"), seed=0)


def test_list_protocol(root, tmp_path):
  write_hashnet_lists(root, test=range(4), database=range(4, 24), train=range(10, 16))
  config = default_data_config("nuswide")
  config.update(dict(root=str(root), protocol="lists"))
  data = build_dataset(config, str(tmp_path / "work"), seed=0)
  paths = np.array(data.source.paths)
  assert sorted(paths[data.split.query]) == sorted(f"images/{i}.jpg" for i in range(4))
  assert len(data.split.database) == 20
  # Train images are database images: one source item each.
  assert len(data.source) == 24
  assert set(data.split.train) <= set(data.split.database)


@pytest.mark.parametrize(
  "lists, message",
  [
    (
      dict(test=range(5), database=range(4, 24), train=range(10, 16)),
      "query and database share 1 images",
    ),
    (dict(test=range(4), database=range(4, 24), train=range(2, 6)), "queries would be trained on"),
  ],
)
def test_list_protocol_overlap_raises(root, tmp_path, lists, message):
  write_hashnet_lists(root, **lists)
  config = default_data_config("nuswide")
  config.update(dict(root=str(root), protocol="lists"))
  with pytest.raises(ValueError, match=message):
    build_dataset(config, str(tmp_path / "work"), seed=0)
