"""Bad input to every entry point: one `error: ...` line naming the culprit, exit 2.

Each row runs the command as a user would, in a subprocess (a few seconds each:
every one imports JAX), and checks: exit status 2, no traceback, the message
names the key, file or file:line, and nothing was written.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import support

needs_fashion_mnist = support.needs_fashion_mnist


@pytest.fixture
def image_list_root(tmp_path):
  """A NUS-WIDE-shaped folder whose list file has a malformed line 3."""
  root = tmp_path / "nus"
  (root / "img").mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "img" / "0.jpg")
  flags = " ".join(["1"] + ["0"] * 20)
  (root / "images.txt").write_text(f"img/0.jpg {flags}\n./img/0.jpg {flags}\nimg/0.jpg 1 0\n")
  (root / "utf16" / "img").mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "utf16" / "img" / "0.jpg")
  (root / "utf16" / "images.txt").write_text(f"img/0.jpg {flags}\n", encoding="utf-16")
  return root


@pytest.fixture
def other_run(tmp_path):
  """A workdir holding (the config.json of) an mmasia run."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = {
    "variant": "mmasia",
    "code_lengths": [16],
    "backbone": "small_cnn",
    "data": {"name": "fashion_mnist", "image_size": 28, "num_channels": 1},
  }
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir


def train(*args):
  return ("train.py", "--config=configs/tiny.py", *args)


def nuswide(*args):
  # Without weights, so that the data mistakes are met without a download first.
  return ("train.py", "--config=configs/nuswide.py", "--config.pretrained_backbone=none", *args)


# (id, command after `python`, what the message must name; {tmp}, {root} and
# {run} stand for the test's folders). The workdir {tmp}/out must not appear.
CASES = [
  ("unknown-key", train("--workdir={tmp}/out", "--config.no_such_key=1"), "--config.no_such_key"),
  ("bad-variant", train("--workdir={tmp}/out", "--config.variant=bogus"), "config.variant='bogus'"),
  (
    "sample-larger-than-database",
    train("--workdir={tmp}/out", "--config.sample_size=5000"),
    "config.sample_size=5000",
  ),
  (
    "dropout-and-eval-batch",
    train("--workdir={tmp}/out", "--config.dropout_rate=1.0", "--config.eval.batch_size=0"),
    "config.dropout_rate=1.0",
  ),
  (
    "cycle-rate-decay-factor",
    train("--workdir={tmp}/out", "--config.cycle_lr_decay.factor=0"),
    "config.cycle_lr_decay",
  ),
  (
    "missing-config-file",
    ("train.py", "--config=configs/no_such.py", "--workdir={tmp}/out"),
    "configs/no_such.py",
  ),
  (
    "missing-dataset-root",
    nuswide("--config.data.root=/nonexistent/nus", "--workdir={tmp}/out"),
    "/nonexistent/nus",
  ),
  (
    "malformed-list-line",
    nuswide("--config.data.root={root}", "--workdir={tmp}/out"),
    "images.txt:3",
  ),
  (
    "utf16-list-file",
    nuswide("--config.data.root={root}/utf16", "--workdir={tmp}/out"),
    "images.txt: this list file is UTF-16",
  ),
  (
    "workdir-inside-the-dataset",
    nuswide("--config.data.root={root}", "--workdir={root}/out"),
    "is inside config.data.root=",
  ),
  (
    "pretrained-backbone-unset",
    (
      "train.py",
      "--config=docs/examples/image_list.py",
      "--config.backbone=alexnet",
      "--config.data.root={root}",
      "--workdir={tmp}/out",
    ),
    "--config.pretrained_backbone=none",
  ),
  (
    "no-torchvision-weights-for-the-small-cnn",
    train("--workdir={tmp}/out", "--config.pretrained_backbone=torchvision"),
    "no weights for backbone 'small_cnn'",
  ),
  ("workdir-of-another-run", train("--workdir={run}"), "variant='mmasia' there"),
  ("codes-not-npz", ("eval.py", "--codes={root}/images.txt"), "images.txt: not an .npz"),
  ("eval-empty-workdir", ("eval.py", "--workdir={tmp}"), "config.json not found"),
  (
    "eval-workdir-and-codes",
    ("eval.py", "--workdir={run}", "--codes={root}/images.txt"),
    "--codes",
  ),
  ("prepare-without-dataset", ("-m", "schn_jax.data.prepare"), "--dataset"),
  (
    "parity-pack-into-its-source",
    ("-m", "schn_jax.parity.pack", "{tmp}", "{tmp}/packed"),
    "overlap: pack into a separate folder",
  ),
  (
    "reference-check-missing-folder",
    ("-m", "schn_jax.parity.check", "{tmp}/no_fixtures"),
    "no_fixtures: not a directory",
  ),
]


@needs_fashion_mnist
@pytest.mark.parametrize("command, culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line(tmp_path, image_list_root, other_run, command, culprit):
  where = {"tmp": tmp_path, "root": image_list_root, "run": other_run}
  before = (other_run / "config.json").read_text()
  proc = subprocess.run(
    [sys.executable, *(a.format(**where) for a in command)],
    cwd=support.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  output = proc.stdout + proc.stderr
  assert proc.returncode == 2, output
  assert "Traceback" not in output, output
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, output
  assert culprit.format(**where) in errors[0], errors[0]
  assert not (tmp_path / "out").exists()
  assert sorted(p.name for p in other_run.iterdir()) == ["config.json"]
  assert (other_run / "config.json").read_text() == before
