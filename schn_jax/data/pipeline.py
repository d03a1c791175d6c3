"""Input pipeline: per-image crops on the host, normalisation on the device.

Host side, per image (PIL, in a thread pool: PIL releases the GIL while it
decodes and resamples, and threads measured faster than grain's worker
processes here, see benchmarks/input_pipeline.py):
  train: random resized crop to `image_size` (area fraction in
    [crop_min_scale, 1], aspect ratio in [3/4, 4/3], torchvision's sampling)
    and a horizontal flip with probability 1/2;
  test: resize the shorter side to `test_resize`, center crop `image_size`
    (resize 256 + center crop 224 by default; with test_resize=image_size on
    28x28 or 32x32 images, the identity).
Batches leave the host as uint8 NHWC, four times less to transfer than
float32; `normalize` (jittable) turns them into float32 NHWC on the device.

Randomness is drawn from (seed, batch number, position in the global batch),
so a batch's augmentation does not depend on thread scheduling, on the number
of workers or on how many hosts share the batch.
"""

import collections
import concurrent.futures
import math
import os
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, min_scale: float):
  """(left, top, right, bottom) of a random crop, torchvision's sampling."""
  area = height * width
  log_ratio = (math.log(3 / 4), math.log(4 / 3))
  for _ in range(10):
    target_area = area * rng.uniform(min_scale, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target_area * ratio))
    h = round(math.sqrt(target_area / ratio))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  # Fallback after ten misses: the whole image, cropped to the ratio range.
  ratio = width / height
  if ratio < 3 / 4:
    w, h = width, round(width / (3 / 4))
  elif ratio > 4 / 3:
    w, h = round(height * (4 / 3)), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def center_crop_box(height: int, width: int, resize: int, size: int):
  """The box of `image` that resize-shorter-side + center crop keeps."""
  scale = resize / min(height, width)
  crop_h, crop_w = size / scale, size / scale
  top, left = (height - crop_h) / 2, (width - crop_w) / 2
  return left, top, left + crop_w, top + crop_h


def transform(image: np.ndarray, rng: np.random.Generator | None, config) -> np.ndarray:
  """One uint8 (H, W, C) image -> uint8 (S, S, C); rng=None for test mode."""
  height, width, channels = image.shape
  size = config.image_size
  if rng is None:
    box = center_crop_box(height, width, config.test_resize or size, size)
  else:
    box = random_resized_crop_box(rng, height, width, config.crop_min_scale)
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  # Resizing only the box crops and resamples in one pass, antialiased.
  out = np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))
  if rng is not None and rng.random() < 0.5:
    out = out[:, ::-1]
  return out.reshape(size, size, channels)


def normalize(images: jax.Array, num_channels: int | None = None, dtype=jnp.float32) -> jax.Array:
  """uint8 (N, H, W, C) -> `dtype` with ImageNet mean/std (jittable).

  Grayscale (C=1) uses the mean of the three channel statistics, or is tiled
  to RGB first when num_channels=3.
  """
  images = jnp.asarray(images, dtype) / 255.0
  if num_channels == 3 and images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if images.shape[-1] == 3:
    mean, std = jnp.array(IMAGENET_MEAN, dtype), jnp.array(IMAGENET_STD, dtype)
  else:
    mean, std = (
      jnp.asarray(np.mean(IMAGENET_MEAN), dtype),
      jnp.asarray(np.mean(IMAGENET_STD), dtype),
    )
  return (images - mean) / std


def host_slice(global_batch_size: int) -> slice:
  """This host's contiguous rows of a global batch.

  The global batch must split evenly across devices (its leading dimension is
  sharded over the mesh) and hence across hosts.
  """
  if global_batch_size % jax.device_count():
    raise ValueError(
      f"batch size {global_batch_size} is not divisible by the {jax.device_count()} devices"
    )
  per_host = global_batch_size // jax.process_count()
  start = jax.process_index() * per_host
  return slice(start, start + per_host)


class Loader:
  """Gathers (image, label) batches of a source in parallel threads."""

  def __init__(self, source, config):
    self.source = source
    self.config = config
    self._pool = concurrent.futures.ThreadPoolExecutor(
      config.num_workers or os.cpu_count(), thread_name_prefix="data"
    )

  def _example(self, index, seed, batch_number, position):
    rng = (
      None
      if seed is None
      else np.random.default_rng((*np.atleast_1d(seed), batch_number, position))
    )
    return transform(self.source.image(int(index)), rng, self.config)

  def _stored_as_served(self, augmenting):
    """True when images can be gathered as stored: an in-memory source already at
    `image_size`, no augmentation, and a test transform that is the identity."""
    images = getattr(self.source, "images", None)
    size = self.config.image_size
    return (
      isinstance(images, np.ndarray)
      and images.shape[1:3] == (size, size)
      and not augmenting
      and self.config.test_resize in (None, size)
    )

  def stored_images(self, indices, *, augment, max_bytes):
    """The uint8 images at `indices` exactly as batches would serve them, when they
    can be taken as stored (see above) and take at most `max_bytes`; else None.
    Training keeps such a pool on device and gathers its batches there."""
    if not self._stored_as_served(augment):
      return None
    images = self.source.images
    if len(indices) * images[0].nbytes > max_bytes:
      return None
    return images[np.asarray(indices, np.int64)]

  def _submit(self, indices, seed, batch_number, positions):
    if self._stored_as_served(seed is not None):
      done = concurrent.futures.Future()
      done.set_result(self.source.images[np.asarray(indices, np.int64)])
      return done
    return [
      self._pool.submit(self._example, index, seed, batch_number, p)
      for index, p in zip(indices, positions)
    ]

  def _assemble(self, indices, futures, batch_size):
    images = (
      futures.result()
      if isinstance(futures, concurrent.futures.Future)
      else np.stack([f.result() for f in futures])
    )
    mask = np.ones(batch_size, bool)
    pad = batch_size - len(indices)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.uint8)])
      mask[len(indices) :] = False
    labels = np.zeros((batch_size, self.source.num_classes), np.float32)
    labels[: len(indices)] = self.source.labels[indices]
    return {"image": images, "label": labels, "mask": mask}

  def batches(
    self,
    indices: np.ndarray,
    batch_size: int,
    *,
    train: bool,
    seed: int | Sequence[int] | None = None,
  ) -> Iterator[dict]:
    """This host's part of each global batch of `indices`, in order.

    Args:
      indices: source indices; the caller shuffles them if it wants to.
      batch_size: the global batch size, divisible by the device count.
      train: random crops and flips (needs `seed`) or the test transform.
      seed: an int or ints, e.g. (run seed, iteration, epoch); with the
        batch number and the position in the batch it fixes each image's
        crop and flip.

    Yields:
      dicts with 'image' uint8 (b, S, S, C), 'label' float32 (b, K) and
      'mask' bool (b,), b = batch_size / process count. The last batch is
      padded to full size with zero images, mask False. (Corrupt images
      never get here: under on_corrupt='skip' the split leaves them out.)
    """
    if train and seed is None and self.config.augment:
      raise ValueError("train mode needs a seed")
    local = host_slice(batch_size)
    indices = np.asarray(indices, np.int64)
    pending = collections.deque()
    for batch_number, start in enumerate(range(0, len(indices), batch_size)):
      positions = np.arange(start, start + batch_size)[local]
      positions = positions[positions < len(indices)]
      local_indices = indices[positions]
      futures = self._submit(
        local_indices,
        seed if train and self.config.augment else None,
        batch_number,
        positions - start,
      )
      pending.append((local_indices, futures))
      if len(pending) > self.config.prefetch:
        yield self._assemble(*pending.popleft(), local.stop - local.start)
    while pending:
      yield self._assemble(*pending.popleft(), local.stop - local.start)

  def close(self):
    self._pool.shutdown(cancel_futures=True)
