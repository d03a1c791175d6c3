"""A run folder under stress: a failing evaluation, damaged files, another run's
settings, pretrained weights that are gone, read-only evaluation, Ctrl-C.

One uninterrupted two-iteration run is trained once per module; the tests work
on copies of it, and the runs they resume must end with its codes, bit for bit.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from schn_jax import errors, evaluator, inference, run_folder
from schn_jax.training import train

import support

pytestmark = support.needs_fashion_mnist


def run_config(**overrides):
  return support.tiny_config(**{"variant": "mmasia", "max_iter": 2, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  train.train_and_evaluate(run_config(), workdir)
  return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
  shutil.copytree(finished_run, tmp_path / "run")
  return tmp_path / "run"


def snapshot(folder):
  return {
    str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
    for p in sorted(folder.rglob("*"))
  }


def assert_same_codes(workdir, finished_run):
  a = np.load(finished_run / "bits_16" / "codes.npz")
  b = np.load(workdir / "bits_16" / "codes.npz")
  for key in ("query_codes", "database_codes"):
    np.testing.assert_array_equal(a[key], b[key])


def damage_arrays(step_dir):
  for f in (step_dir / "state").rglob("d/*"):
    if f.is_file():
      f.write_bytes(b"garbage")


def damage_meta(step_dir):
  (step_dir / "meta" / "metadata").write_text('{"bits": 16, ')


def test_a_failing_evaluation_loses_no_training(tmp_path, monkeypatch, finished_run):
  evaluate = evaluator.Evaluator.__call__

  def fails_at_the_end(self, encoder, learned_codes=None, output_dir=None):
    if output_dir is not None:  # only the last evaluation writes the codes
      raise RuntimeError("the disk filled up")
    return evaluate(self, encoder, learned_codes, output_dir)

  monkeypatch.setattr(evaluator.Evaluator, "__call__", fails_at_the_end)
  with pytest.raises(RuntimeError, match="disk filled up"):
    train.train_and_evaluate(run_config(), tmp_path)
  assert (tmp_path / "bits_16" / "checkpoints" / "2").is_dir()
  monkeypatch.undo()
  # The rerun only evaluates; both runs trained from scratch in one go, so their
  # codes and history match the module's run bit for bit.
  results = train.train_and_evaluate(run_config(), tmp_path)
  assert_same_codes(tmp_path, finished_run)
  finished = json.loads((finished_run / "metrics.json").read_text())["16"]
  assert results["16"]["history"] == finished["history"]
  assert [h["iteration"] for h in finished["history"]] == [1, 2]


@pytest.mark.parametrize("change", [dict(variant="tomm"), dict(code_lengths=(12,))])
def test_another_runs_settings_are_refused_before_touching_the_workdir(run_copy, change):
  before = snapshot(run_copy)
  with pytest.raises(train.ConfigError, match="use another --workdir"):
    train.train_and_evaluate(run_config(**change), run_copy)
  assert snapshot(run_copy) == before


@pytest.mark.parametrize("name", ["metrics.json", "config.json"])
def test_a_damaged_json_file_is_named(run_copy, name):
  (run_copy / name).write_text('{"16": ')
  with pytest.raises(errors.UserError, match=rf"{name} is not valid JSON"):
    train.train_and_evaluate(run_config(), run_copy)
  if name == "config.json":
    with pytest.raises(errors.UserError, match=r"config\.json is not valid JSON"):
      evaluator.evaluate_run(run_copy)


@pytest.mark.parametrize("damage", [damage_arrays, damage_meta])
def test_evaluation_falls_back_to_the_older_checkpoint(run_copy, caplog, damage):
  damage(run_copy / "bits_16" / "checkpoints" / "2")
  before = snapshot(run_copy)
  with caplog.at_level(logging.WARNING):
    result = evaluator.evaluate_run(run_copy, output_dir=run_copy.parent / "out")["16"]
  assert result["iteration"] == 1
  assert "checkpoints/2" in caplog.text and "cannot be read" in caplog.text
  assert "See full TensorStore details" not in caplog.text
  assert snapshot(run_copy) == before


def test_inference_falls_back_too_unless_the_step_is_named(run_copy):
  damage_arrays(run_copy / "bits_16" / "checkpoints" / "2")
  before = snapshot(run_copy)
  assert inference.TrainedModel.from_workdir(run_copy).step == 1
  with pytest.raises(
    errors.CheckpointError,
    match=r"no checkpoint in .*checkpoints can be read \(.*checkpoints/2: .*choose another --step",
  ):
    inference.TrainedModel.from_workdir(run_copy, step=2)
  assert snapshot(run_copy) == before


def test_resume_sets_a_damaged_checkpoint_aside(run_copy, finished_run):
  damage_arrays(run_copy / "bits_16" / "checkpoints" / "2")
  (run_copy / "metrics.json").unlink()
  train.train_and_evaluate(run_config(), run_copy)
  assert_same_codes(run_copy, finished_run)
  assert (run_folder.damaged_dir(run_copy, 16) / "2").is_dir()
  assert sorted(p.name for p in (run_copy / "bits_16" / "checkpoints").iterdir()) == ["1", "2"]


def test_no_checkpoint_at_all_is_a_user_error(run_copy):
  for step in ("1", "2"):
    damage_meta(run_copy / "bits_16" / "checkpoints" / step)
  with pytest.raises(errors.CheckpointError, match=r"no checkpoint in .*checkpoints can be read"):
    evaluator.evaluate_run(run_copy)


def test_resuming_and_evaluating_never_read_the_pretrained_weights(run_copy):
  gone = "/nonexistent/alexnet-owt-7be5be79.pth"
  stored = json.loads((run_copy / "config.json").read_text())
  (run_copy / "config.json").write_text(json.dumps({**stored, "pretrained_backbone": gone}))
  assert evaluator.evaluate_run(run_copy)["16"]["iteration"] == 2
  results = train.train_and_evaluate(run_config(pretrained_backbone=gone), run_copy)
  assert results["16"]["iterations"] == 2


def test_eval_workdir_writes_only_where_it_is_told(run_copy, tmp_path, monkeypatch, caplog):
  before = snapshot(run_copy)
  evaluator.evaluate_run(run_copy, output_dir=tmp_path / "out")
  assert sorted(p.name for p in (tmp_path / "out" / "bits_16").iterdir()) == [
    "codes.npz",
    "curves.png",
    "metrics.json",
  ]
  assert snapshot(run_copy) == before
  # A folder this process may not write (root ignores permission bits, so the
  # check itself is replaced): evaluated, nothing written, and it says so.
  monkeypatch.setattr(evaluator, "writable", lambda directory: False)
  with caplog.at_level(logging.WARNING):
    result = evaluator.evaluate_run(run_copy)
  assert result["16"]["iteration"] == 2
  assert "is not writable: nothing is written" in caplog.text
  assert snapshot(run_copy) == before


def test_ctrl_c_keeps_the_checkpoint_and_exits_130(tmp_path):
  proc = subprocess.Popen(
    [
      sys.executable,
      "train.py",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path}",
      "--config.variant=mmasia",
      "--config.max_iter=200",  # far more than the interrupt needs: the run must not end first
    ],
    cwd=support.REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  first = tmp_path / "bits_16" / "checkpoints" / "1"
  deadline = time.time() + 600
  while not first.is_dir() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  os.killpg(proc.pid, signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err
  assert "Traceback" not in out + err, err
  assert err.strip().splitlines()[-1].startswith("interrupted: ")
  # Every checkpoint left is complete (none half-written), and the latest reads back.
  steps = [p.name for p in (tmp_path / "bits_16" / "checkpoints").iterdir()]
  assert steps and all(name.isdigit() for name in steps), steps
  assert evaluator.evaluate_run(tmp_path)["16"]["iteration"] == max(map(int, steps))
