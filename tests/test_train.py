"""End-to-end training on the tiny config: train -> checkpoint -> evaluate, resume, failures."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from schn_jax import evaluator
from schn_jax.training import train

import support

pytestmark = support.needs_fashion_mnist


def train_cli(workdir, *overrides, **kwargs):
  return subprocess.Popen(
    [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}", *overrides],
    cwd=support.REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
def test_tiny_run_trains_checkpoints_and_evaluates(tmp_path, variant):
  results = train.train_and_evaluate(support.tiny_config(variant=variant), tmp_path)
  bits = str(tiny.get_config().code_lengths[0])
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved[bits]["map"] == pytest.approx(results[bits]["map"])
  for key in ("map", "topk", "variant", "iterations", "train_seconds"):
    assert key in saved[bits]
  assert saved[bits]["variant"] == variant and saved[bits]["iterations"] == 2
  assert saved[bits]["database_rows_with_zero_bits"] == 0  # 'cover' sampling, two iterations
  # Better than random ranking of 10 balanced classes (mAP ~0.1) after two tiny iterations.
  assert saved[bits]["map"] > 0.15
  run = tmp_path / f"bits_{bits}"
  assert (run / "checkpoints" / "2").is_dir()
  assert (run / "curves.png").stat().st_size > 0
  codes = np.load(run / "codes.npz")
  assert set(np.unique(codes["query_codes"])) <= {-1.0, 0.0, 1.0}
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  # eval --workdir: the checkpoint reproduces the run's learned-code mAP exactly,
  # and the inductive mode encodes the database instead.
  learned = evaluator.evaluate_run(tmp_path)[bits]
  assert learned["map"] == saved[bits]["map"] and learned["database_codes"] == "learned"
  encoded = evaluator.evaluate_run(tmp_path, {"database_codes": "encoded"})[bits]
  assert encoded["database_codes"] == "encoded" and encoded["database_rows_with_zero_bits"] == 0
  assert (run / "eval" / "codes.npz").is_file()


def test_eval_cli_on_a_workdir(tmp_path):
  train.train_and_evaluate(support.tiny_config(variant="mmasia", max_iter=1), tmp_path)
  proc = subprocess.run(
    [sys.executable, "eval.py", f"--workdir={tmp_path}", "--ties=tie_aware"],
    cwd=support.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])["16"]
  assert result["ties"] == "tie_aware" and result["iteration"] == 1


def test_killed_run_resumes_to_identical_codes(tmp_path):
  overrides = ["--config.max_iter=3", "--config.checkpoint_every=1"]
  reference = train_cli(tmp_path / "straight", *overrides)
  out, _ = reference.communicate(timeout=600)
  assert reference.returncode == 0, out

  killed = tmp_path / "killed"
  proc = train_cli(killed, *overrides, start_new_session=True)
  first = killed / "bits_16" / "checkpoints" / "1"
  deadline = time.time() + 600
  while not first.is_dir() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "metrics.json").exists()

  resumed = train_cli(killed, *overrides)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  a = np.load(tmp_path / "straight" / "bits_16" / "codes.npz")
  b = np.load(killed / "bits_16" / "codes.npz")
  for key in ("query_codes", "database_codes"):
    np.testing.assert_array_equal(a[key], b[key])
  assert json.loads((killed / "metrics.json").read_text())["16"]["iterations"] == 3


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  train.train_and_evaluate(support.tiny_config(max_iter=1), tmp_path)
  with pytest.raises(FloatingPointError, match=r"loss term feature_image = nan at iteration 1"):
    train.train_and_evaluate(support.tiny_config(max_iter=2, gamma=float("nan")), tmp_path)
  checkpoints = sorted(p.name for p in (tmp_path / "bits_16" / "checkpoints").iterdir())
  assert checkpoints == ["1"]


def test_impossible_config_is_refused_before_compiling(tmp_path):
  with pytest.raises(train.ConfigError, match=r"config.sample_size=5000 must be in \[1, 1000\]"):
    train.train_and_evaluate(support.tiny_config(sample_size=5000), tmp_path)


def test_unknown_config_key_is_refused(tmp_path):
  proc = train_cli(tmp_path, "--config.no_such_key=1")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0 and "no_such_key" in out
