r"""Train-mode input pipeline throughput at 224x224, images per second.

  python -m benchmarks.input_pipeline [--num_images=1024] [--batch_size=64]

Measures, on this machine, uint8 batches leaving the host (decode + random
resized crop + flip) from JPEG files written to a temporary folder and from
in-memory arrays, with the thread-pool loader the library uses and, for
comparison, grain worker processes running the same per-image transform;
then the jitted normalisation that finishes the batch on the device. Each
rate includes opening the iterator (and so starting grain's processes), as
the trainer opens one per sampled database subset.
"""

import os
import pathlib
import tempfile
import time

import grain
import jax
import numpy as np
from absl import app, flags
from PIL import Image

from schn_jax.data import default_data_config, image_list, pipeline, sources

_NUM_IMAGES = flags.DEFINE_integer("num_images", 1024, "Images per run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")


def write_jpegs(root: pathlib.Path, count: int) -> None:
  """Photo-like JPEGs (smooth shapes plus mild noise), 320x256 to 400x300."""
  rng = np.random.default_rng(0)
  lines = []
  for i in range(count):
    width, height = (320, 256) if i % 2 else (400, 300)
    y, x = np.mgrid[:height, :width] / max(width, height)
    phase = rng.uniform(0, 6, 3)
    pixels = np.stack([np.sin(7 * x + 5 * y * c + p) for c, p in zip((1, 2, 3), phase)], -1)
    pixels = 127 * (pixels + 1) + rng.normal(0, 8, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"{i}.jpg", quality=90)
    lines.append(f"{i}.jpg 1 0")
  (root / "images.txt").write_text("\n".join(lines) + "\n")


def thread_loader_rate(source, config, indices, batch_size):
  loader = pipeline.Loader(source, config)
  start = time.perf_counter()
  for _ in loader.batches(indices, batch_size, train=True, seed=0):
    pass
  rate = len(indices) / (time.perf_counter() - start)
  loader.close()
  return rate


class _Transform(grain.transforms.Map):
  """Picklable per-image work for grain's worker processes."""

  def __init__(self, source, config):
    self.source, self.config = source, config

  def map(self, element):
    position, index = element
    rng = np.random.default_rng((0, position))
    return pipeline.transform(self.source.image(int(index)), rng, self.config)


def grain_rate(source, config, indices, batch_size, num_workers):
  dataset = (
    grain.MapDataset.source(list(enumerate(indices)))
    .map(_Transform(source, config))
    .batch(batch_size)
    .to_iter_dataset()
  )
  if num_workers:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  # Start-up counts: the trainer opens a new iterator for every database
  # sample (every outer iteration).
  start = time.perf_counter()
  count = sum(len(batch) for batch in dataset)
  return count / (time.perf_counter() - start)


def main(argv):
  del argv
  num_images, batch_size = _NUM_IMAGES.value, _BATCH_SIZE.value
  config = default_data_config("nuswide")
  indices = np.random.default_rng(0).permutation(num_images)
  print(f"{os.cpu_count()} CPUs, JAX devices: {jax.devices()}")
  print(
    f"train mode, {config.image_size}x{config.image_size}, batch "
    f"{batch_size}, {num_images} images per run (images/s):"
  )
  with tempfile.TemporaryDirectory() as tmp:
    write_jpegs(pathlib.Path(tmp), num_images)
    jpegs = image_list.ImageListSource("bench", tmp, ["images.txt"], 2, unlabeled="fail")
    rng = np.random.default_rng(0)
    arrays = {
      "arrays 256x256x3": rng.integers(0, 256, (num_images, 256, 256, 3)),
      "arrays 32x32x3": rng.integers(0, 256, (num_images, 32, 32, 3)),
    }
    runs = [("JPEG files", jpegs)] + [
      (name, sources.ArraySource(name, a.astype(np.uint8), jpegs.labels))
      for name, a in arrays.items()
    ]
    for name, source in runs:
      for workers in (1, 2, 4):
        config.num_workers = workers
        rate = thread_loader_rate(source, config, indices, batch_size)
        print(f"  {name:18s} threads={workers}: {rate:8.0f}")
      for workers in (0, 2):
        rate = grain_rate(source, config, indices, batch_size, workers)
        print(f"  {name:18s} grain workers={workers}: {rate:8.0f}")

  normalize = jax.jit(pipeline.normalize)
  batch = np.zeros((batch_size, config.image_size, config.image_size, 3), np.uint8)
  normalize(batch).block_until_ready()
  start, repeats = time.perf_counter(), 20
  for _ in range(repeats):
    normalize(batch).block_until_ready()
  rate = repeats * batch_size / (time.perf_counter() - start)
  print(f"  normalize on {jax.devices()[0].platform}: {rate:8.0f}")


if __name__ == "__main__":
  app.run(main)
