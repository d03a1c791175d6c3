"""Code files, bad input and the eval.py contract (FAISS search: test_indexes.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import metrics

import support


def small_set(bits=12, num_queries=6, num_database=40, seed=0):
  rng = np.random.default_rng(seed)
  codes = np.where(rng.random((num_queries + num_database, bits)) < 0.5, -1, 1)
  labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, len(codes))]
  return {
    "query_codes": codes[:num_queries],
    "database_codes": codes[num_queries:],
    "query_labels": labels[:num_queries],
    "database_labels": labels[num_queries:],
  }


def run(*args):
  return subprocess.run(
    [sys.executable, *args], cwd=support.REPO, capture_output=True, text=True, check=False
  )


def test_save_load_round_trip(tmp_path):
  arrays = small_set()
  arrays["database_codes"][3] = 0
  codes_lib.save_codes(tmp_path / "codes.npz", **arrays)
  loaded = codes_lib.load_codes(tmp_path / "codes.npz")
  for key, value in arrays.items():
    np.testing.assert_array_equal(loaded[key], value)


@pytest.mark.parametrize(
  "change,message",
  [
    (lambda a: a.pop("query_labels"), "missing key(s) ['query_labels']"),
    (
      lambda a: a.update(database_codes=a["database_codes"][:, :10]),
      "query_codes have 12 bits but database_codes have 10",
    ),
    (
      lambda a: a.update(database_labels=a["database_labels"][:-1]),
      "database_codes has 40 rows but database_labels has 39",
    ),
    (
      lambda a: a.update(query_labels=np.zeros((6, 4))),
      "query_labels have 4 classes but database_labels have 3",
    ),
    (lambda a: a.update(query_codes=a["query_codes"] * 0.5), "query_codes: codes must be -1, +1"),
    (
      lambda a: a.update(database_labels=a["database_labels"] * 2),
      "database_labels: labels must be multi-hot 0/1",
    ),
    (
      lambda a: a.update(query_codes=a["query_codes"][0]),
      "query_codes: expected a non-empty 2-D array",
    ),
    (lambda a: a.update(query_codes=a["query_codes"] > 0), "query_codes: boolean codes"),
    (
      lambda a: a.update(database_codes=(a["database_codes"] > 0).astype(np.int8)),
      "database_codes: codes hold only 0 and 1",
    ),
  ],
)
def test_bad_code_files_name_the_problem(tmp_path, change, message):
  arrays = small_set()
  change(arrays)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(codes_lib.CodesError) as error:
    codes_lib.load_codes(tmp_path / "bad.npz")
  assert message in str(error.value)
  assert "bad.npz" in str(error.value)


@pytest.mark.parametrize(
  "content", [b"query_codes,database_codes\n1,-1\n", b"PK\x03\x04 truncated zip"]
)
def test_a_file_that_is_not_an_npz_is_named(tmp_path, content):
  (tmp_path / "codes.npz").write_bytes(content)
  with pytest.raises(codes_lib.CodesError, match=r"codes\.npz: not an \.npz file"):
    codes_lib.load_codes(tmp_path / "codes.npz")


def test_one_bit_codes_evaluate():
  arrays = small_set(bits=1)
  result = metrics.evaluate_codes(**arrays)
  # Every item is within radius 2 of a 1-bit query: precision over the database.
  relevant = (arrays["query_labels"] @ arrays["database_labels"].T) > 0
  assert result["precision_at_radius_2"] == pytest.approx(relevant.mean())
  assert result["bits"] == 1


@pytest.mark.parametrize(
  "topk,ties", [(41, "stable"), (0, "stable"), (-2, "tie_aware"), (5, "random")]
)
def test_bad_topk_or_ties(topk, ties):
  with pytest.raises(ValueError, match="topk=|ties="):
    metrics.evaluate_codes(**small_set(), topk=topk, ties=ties)


def test_eval_cli_contract(tmp_path, fixtures_root):
  data = np.load(fixtures_root / "multilabel" / "tomm" / "map.npz")
  codes_lib.save_codes(
    tmp_path / "codes.npz",
    data["query_codes"],
    data["db_codes"],
    data["query_labels"],
    data["db_labels"],
  )
  result = run(
    "eval.py",
    f"--codes={tmp_path / 'codes.npz'}",
    "--topk=500",
    "--ties=reference",
    f"--output_dir={tmp_path / 'out'}",
  )
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["map"] == pytest.approx(float(data["map_stable_refslice_top500"]), abs=1e-6)
  assert (
    summary["topk"],
    summary["ties"],
    summary["num_queries"],
    summary["num_database"],
    summary["bits"],
  ) == (500, "reference", 50, 2000, 24)
  saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert saved["map"] == summary["map"] and "curves" in saved
  assert (tmp_path / "out" / "curves.png").stat().st_size > 0


def test_eval_cli_errors(tmp_path):
  arrays = small_set()
  codes_lib.save_codes(tmp_path / "codes.npz", **arrays)
  result = run("eval.py", f"--codes={tmp_path / 'codes.npz'}", "--topk=100")
  assert result.returncode != 0
  assert "topk=100: use -1 (all) or 1..40" in result.stderr
  result = run("eval.py", f"--codes={tmp_path / 'missing.npz'}")
  assert result.returncode != 0 and "no such file" in result.stderr


def test_eval_cli_reads_torch_files(tmp_path):
  torch = pytest.importorskip("torch")
  arrays = small_set()
  args = []
  for key, value in arrays.items():
    torch.save(torch.from_numpy(np.asarray(value, np.float32)), tmp_path / f"{key}.t")
    args.append(f"--{key}_t={tmp_path / f'{key}.t'}")
  result = run("eval.py", *args)
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["map"] == pytest.approx(metrics.evaluate_codes(**arrays)["map"], abs=1e-9)
