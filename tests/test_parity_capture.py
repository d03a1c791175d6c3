"""The capture of trajectory fixtures from a reference checkout (schn_jax/parity/capture.py).

With SCHN_REFERENCE pointing at a checkout of JalinWang/SCHN (the fixtures' commit), a
short run of the tiny config is captured from the reference's own train() and our loop
replays it in float64: codes identical, losses to 1e-6, mAP to 1e-9. Without one (CI),
that test is skipped; the rest need no reference.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from schn_jax import errors
from schn_jax.parity import build, capture, fixtures, trajectory

import support


def _reference_files(root):
  """Files named like the reference's, with other contents."""
  _, digests = capture.expected_reference()
  for name in digests:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("# not the reference\n")
  return digests


def test_cli_refuses_a_folder_that_is_not_a_checkout(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "schn_jax.parity.capture",
      f"--reference={tmp_path}",
      "--config=configs/tiny.py",
      "--iterations=1",
      f"--out={tmp_path / 'out'}",
    ],
    cwd=support.REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: --reference={tmp_path}: no main_mmasia.py there"), lines
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_a_changed_reference_file_is_named(tmp_path):
  digests = _reference_files(tmp_path)
  with pytest.raises(capture.NotAReferenceError, match="main_mmasia.py differs from commit"):
    capture.check_reference(tmp_path)
  # With every file right but one, that one is named.
  changed = "modules/all_in_one.py"
  for name in digests:
    if name != changed:
      (tmp_path / name).write_bytes(b"")
  digests = {**digests, **{n: capture._sha256(tmp_path / n) for n in digests if n != changed}}
  original = capture.expected_reference
  capture.expected_reference = lambda: ("9e2f52e", digests)
  try:
    with pytest.raises(capture.NotAReferenceError, match=f"{changed} differs"):
      capture.check_reference(tmp_path)
  finally:
    capture.expected_reference = original


def test_missing_torch_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees uninstalled
  with pytest.raises(errors.MissingDependencyError, match="requirements-dev.txt") as raised:
    capture.import_torch()
  assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
  "key, value, named",
  [
    ("weight_decay", 1e-4, "config.weight_decay=0.0001"),
    ("backbone", "resnet18", "config.backbone='resnet18'"),
    ("code_lengths", (16, 32), "config.code_lengths=(16, 32)"),
  ],
)
def test_what_the_reference_cannot_run_is_named(key, value, named):
  config = tiny.get_config()
  capture.capturable(config, 2)  # the tiny config as it is is capturable
  config[key] = value
  with pytest.raises(errors.ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
    capture.capturable(config, 2)


def test_a_cycle_decay_inside_the_recorded_iterations_is_refused():
  config = tiny.get_config()
  config.database_init = "zeros"
  config.cycle_lr_decay.milestones = (0,)
  with pytest.raises(errors.ConfigError, match="cycle_lr_decay.milestones=\\(0,\\)"):
    capture.capturable(config, 2)
  capture.capturable(config, 1)  # after the last recorded iteration: no effect


def test_stable_map_against_brute_force():
  rng = np.random.default_rng(0)
  query = np.where(rng.random((6, 8)) < 0.5, -1.0, 1.0)
  database = np.where(rng.random((40, 8)) < 0.5, -1.0, 1.0)
  database[5] = 0  # a row never sampled
  query_labels = np.eye(3)[rng.integers(0, 3, 6)]
  database_labels = np.eye(3)[rng.integers(0, 3, 40)]
  expected, expected_sliced = [], []
  for q in range(6):
    hamming = 0.5 * (8 - database @ query[q])
    order = sorted(range(40), key=lambda i: (hamming[i], i))
    for target, items in ((expected, order), (expected_sliced, order[:-1])):
      hits = [query_labels[q] @ database_labels[i] > 0 for i in items]
      ranks = [k + 1 for k, hit in enumerate(hits) if hit]
      target.append(np.mean([(j + 1) / r for j, r in enumerate(ranks)]) if ranks else 0.0)
  args = (query, database, query_labels, database_labels)
  assert capture.stable_map(*args) == pytest.approx(np.mean(expected), abs=1e-15)
  assert capture.stable_map(*args, drop_last=True) == pytest.approx(
    np.mean(expected_sliced), abs=1e-15
  )


def test_packed_attention_weights_are_split_in_order():
  packed = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
  unpacked = build.split_packed_attention({"a.in_proj_weight": packed, "a.in_proj_bias": 1})
  assert sorted(unpacked) == [
    "a.in_proj_bias",
    "a.k_proj_weight",
    "a.q_proj_weight",
    "a.v_proj_weight",
  ]
  np.testing.assert_array_equal(unpacked["a.q_proj_weight"], packed[:2])
  np.testing.assert_array_equal(unpacked["a.k_proj_weight"], packed[2:4])
  np.testing.assert_array_equal(unpacked["a.v_proj_weight"], packed[4:])


def test_grey_inputs_are_normalized_with_the_pipelines_statistics():
  mean, std = build.input_normalization(1, 1)
  assert mean == [pytest.approx(0.449, abs=1e-12)] and std == [pytest.approx(0.226, abs=1e-12)]
  assert build.input_normalization(3, 1) == build.input_normalization(3, 3)


@pytest.fixture(scope="module")
def reference():
  path = os.environ.get("SCHN_REFERENCE")
  if not path:
    pytest.skip("no reference checkout: set SCHN_REFERENCE=/path/to/JalinWang/SCHN checkout")
  return capture.check_reference(path)


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
def test_captured_tiny_run_replays_in_float64(reference, variant, tmp_path):
  config = capture.capture_config(tiny.get_config())
  config.variant = variant
  config.code_lengths = (24,)
  config.database_init = "zeros"
  config.data.num_database = 300
  config.data.query_per_class = 4
  config.sample_size = 96
  config.batch_size = 32
  capture.capturable(config, 2)
  fixture = capture.capture(reference, config, 2, tmp_path / variant, seed=3)
  assert fixture.meta["backbone"] == "small_cnn" and fixture.meta["num_channels"] == 1
  assert fixture.npz("float64")["database_images"].shape == (300, 28, 28, 1)
  assert fixtures.find_fixture_dirs(tmp_path / variant) == [tmp_path / variant]
  with build.precision("float64"):
    results = trajectory.check_trajectory(fixture, "float64")
  quantities = {c.quantity for c in results}
  losses = ("loss_cycle",) if variant == "mmasia" else ("loss_cycle", "lossD_real", "lossG")
  for t in range(2):
    assert f"float64 iteration {t}/B_after" in quantities
    assert {f"float64 iteration {t}/{name}" for name in losses} <= quantities
    assert f"float64 eval {t + 1}/map (stable ties)" in quantities
  failed = [(c.quantity, c.error, c.tolerance) for c in results if not c.ok]
  assert not failed
