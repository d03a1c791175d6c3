"""Augmentation, normalisation and batching."""

from unittest import mock

import jax
import numpy as np
import pytest

from schn_jax.data import default_data_config, pipeline, sources


def config(**overrides):
  c = default_data_config("cifar10")
  c.update({**dict(image_size=24, test_resize=28, num_workers=2), **overrides})
  return c


def array_source(n=40, size=(36, 48), channels=3):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, *size, channels)).astype(np.uint8)
  return sources.ArraySource("toy", images, sources.one_hot(np.arange(n) % 10, 10))


def test_random_resized_crop_box_in_bounds_and_scale():
  rng = np.random.default_rng(0)
  for _ in range(500):
    left, top, right, bottom = pipeline.random_resized_crop_box(rng, 30, 50, min_scale=0.3)
    assert 0 <= left < right <= 50 and 0 <= top < bottom <= 30
    area = (right - left) * (bottom - top) / 1500
    assert 0.25 <= area <= 1.0
    assert 3 / 4 - 0.1 <= (right - left) / (bottom - top) <= 4 / 3 + 0.1


def test_test_transform_is_resize_then_center_crop():
  # Resizing 56x80 to 28x40 and cropping the center 24x24 keeps rows 4:52
  # and columns 16:64 of the original.
  image = np.zeros((56, 80, 3), np.uint8)
  image[4:52, 16:64] = 200
  out = pipeline.transform(image, None, config())
  assert out.shape == (24, 24, 3)
  assert (out[1:-1, 1:-1] == 200).all()
  image[4:52, 16:64] = 0
  image[6:50, 18:62] = 200  # One output pixel (two input pixels) narrower.
  out = pipeline.transform(image, None, config())
  assert (out[2:-2, 2:-2] == 200).all()
  assert (out[0] < 200).all() and (out[:, -1] < 200).all()
  identity = config(image_size=32, test_resize=None)
  small = array_source(size=(32, 32)).image(3)
  np.testing.assert_array_equal(pipeline.transform(small, None, identity), small)


def test_train_transform_deterministic_given_rng():
  image = array_source().image(0)
  a = pipeline.transform(image, np.random.default_rng(7), config())
  b = pipeline.transform(image, np.random.default_rng(7), config())
  c = pipeline.transform(image, np.random.default_rng(8), config())
  assert a.shape == (24, 24, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_full_crop_and_flip():
  # With the crop forced to the whole image, train output is the resized
  # image, mirrored for about half of the seeds.
  image = np.tile(np.arange(24, dtype=np.uint8)[None, :, None] * 10, (24, 1, 3))
  c = config(crop_min_scale=1.0)
  flips = 0
  for seed in range(40):
    out = pipeline.transform(image, np.random.default_rng(seed), c)
    if np.array_equal(out, image[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 10 < flips < 30


def test_grayscale_keeps_one_channel_until_normalize():
  gray = array_source(channels=1, size=(28, 28)).image(0)
  out = pipeline.transform(gray, np.random.default_rng(0), config())
  assert out.shape == (24, 24, 1)
  assert pipeline.normalize(out[None]).shape == (1, 24, 24, 1)
  tiled = pipeline.normalize(out[None], num_channels=3)
  assert tiled.shape == (1, 24, 24, 3)
  np.testing.assert_allclose(
    tiled[0, ..., 0] * 0.229 + 0.485, tiled[0, ..., 2] * 0.225 + 0.406, atol=1e-5
  )


def test_normalize_uses_imagenet_statistics():
  mean = np.round(np.array(pipeline.IMAGENET_MEAN) * 255).astype(np.uint8)
  images = np.broadcast_to(mean, (2, 4, 4, 3))
  out = jax.jit(pipeline.normalize)(images)
  assert out.dtype == np.float32 and out.shape == (2, 4, 4, 3)
  np.testing.assert_allclose(out, 0, atol=0.01)
  white = pipeline.normalize(np.full((1, 1, 1, 3), 255, np.uint8))
  np.testing.assert_allclose(
    white[0, 0, 0],
    (1 - np.array(pipeline.IMAGENET_MEAN)) / np.array(pipeline.IMAGENET_STD),
    rtol=1e-6,
  )


def test_batches_deterministic_and_independent_of_workers():
  source = array_source()
  indices = np.random.default_rng(0).permutation(40)
  one = pipeline.Loader(source, config(num_workers=1))
  two = pipeline.Loader(source, config(num_workers=2))
  a = list(one.batches(indices, 8, train=True, seed=(3, 1)))
  b = list(two.batches(indices, 8, train=True, seed=(3, 1)))
  c = list(two.batches(indices, 8, train=True, seed=(3, 2)))
  assert len(a) == 5
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  np.testing.assert_array_equal(np.concatenate([x["label"] for x in a]), source.labels[indices])
  with pytest.raises(ValueError, match="needs a seed"):
    next(one.batches(indices, 8, train=True))


def test_last_batch_padded_and_masked():
  source = array_source()
  loader = pipeline.Loader(source, config())
  batches = list(loader.batches(np.arange(13), 8, train=False))
  assert [b["image"].shape[0] for b in batches] == [8, 8]
  np.testing.assert_array_equal(batches[1]["mask"], [1] * 5 + [0] * 3)
  assert (batches[1]["image"][5:] == 0).all()
  assert (batches[1]["label"][5:] == 0).all()
  np.testing.assert_array_equal(
    batches[1]["image"][0], pipeline.transform(source.image(8), None, config())
  )


def test_batch_must_split_across_devices():
  with mock.patch.object(jax, "device_count", return_value=4):
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
      pipeline.host_slice(10)


def test_each_host_gets_its_slice_of_the_global_batch():
  source = array_source()
  indices = np.arange(40)[::-1]
  whole = list(pipeline.Loader(source, config()).batches(indices, 8, train=True, seed=4))
  for host in range(2):
    with (
      mock.patch.object(jax, "process_count", return_value=2),
      mock.patch.object(jax, "process_index", return_value=host),
    ):
      assert pipeline.host_slice(8) == slice(4 * host, 4 * host + 4)
      local = list(pipeline.Loader(source, config()).batches(indices, 8, train=True, seed=4))
    for w, mine in zip(whole, local):
      # Same augmentation as on one host: rows are keyed by global position.
      np.testing.assert_array_equal(mine["image"], w["image"][4 * host :][:4])
      np.testing.assert_array_equal(mine["label"], w["label"][4 * host :][:4])
