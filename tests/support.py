"""Helpers shared by the tests: where things are, the tiny run, running a command."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from schn_jax.data import sources
from schn_jax.evaluation import hamming
from schn_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST = pathlib.Path(sources.FASHION_MNIST_ROOT)
needs_fashion_mnist = pytest.mark.skipif(
  not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist"
)
CLASSES = sources.FASHION_MNIST_CLASSES


def tiny_config(**overrides):
  """configs/tiny.py with `overrides` applied."""
  config = tiny.get_config()
  config.update(overrides)
  return config


def cli(module, *args, cwd=REPO, timeout=300):
  """Runs `python -m module args...` as a user would; the CompletedProcess."""
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
  )


def write_class_folders(folder, indices, fashion):
  """PNG files folder/<class>/<index>.png of Fashion-MNIST images."""
  for i in indices:
    path = folder / CLASSES[int(fashion.labels[i].argmax())] / f"{i:05d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(fashion.images[i, ..., 0]).save(path)


def interrupt_hashing_after(monkeypatch, model, batches):
  """Makes `model.encoder.hash` raise KeyboardInterrupt on its call after
  `batches` batches, as a Ctrl-C mid-encode would; returns the original hash."""
  hash_batch, calls = model.encoder.hash, []

  def interrupted(batch):
    if len(calls) == batches:
      raise KeyboardInterrupt
    calls.append(len(batch))
    return hash_batch(batch)

  monkeypatch.setattr(model.encoder, "hash", interrupted)
  return hash_batch


def tiny_retrieval_run(root):
  """(workdir of a one-iteration tiny run, a database folder of 150 Fashion-MNIST
  PNGs, a query folder of 10), written under `root`."""
  train.train_and_evaluate(tiny_config(variant="mmasia", max_iter=1), root / "run")
  fashion = sources.fashion_mnist_source()
  write_class_folders(root / "database", range(60000, 60150), fashion)
  write_class_folders(root / "queries", range(69990, 70000), fashion)
  return root / "run", root / "database", root / "queries"


def exact_topk(query_codes, database_codes, k):
  """The exact k nearest of each query, ties by database position: a stable
  sort of the whole distance matrix (ids (Q, k), distances (Q, k))."""
  distances = hamming.hamming_distances(query_codes, database_codes)
  ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
  return ids, np.take_along_axis(distances, ids, 1)
