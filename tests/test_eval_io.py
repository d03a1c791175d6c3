"""Code files, bad input, the eval.py contract and FAISS export."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import hamming
from schn_jax.evaluation import metrics
from schn_jax.evaluation import search

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_set(bits=12, num_queries=6, num_database=40, seed=0):
  rng = np.random.default_rng(seed)
  codes = np.where(rng.random((num_queries + num_database, bits)) < 0.5, -1, 1)
  labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, len(codes))]
  return {'query_codes': codes[:num_queries],
          'database_codes': codes[num_queries:],
          'query_labels': labels[:num_queries],
          'database_labels': labels[num_queries:]}


def run(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, check=False)


def test_save_load_round_trip(tmp_path):
  arrays = small_set()
  arrays['database_codes'][3] = 0
  codes_lib.save_codes(tmp_path / 'codes.npz', **arrays)
  loaded = codes_lib.load_codes(tmp_path / 'codes.npz')
  for key, value in arrays.items():
    np.testing.assert_array_equal(loaded[key], value)


@pytest.mark.parametrize('change,message', [
    (lambda a: a.pop('query_labels'), "missing key(s) ['query_labels']"),
    (lambda a: a.update(database_codes=a['database_codes'][:, :10]),
     'query_codes have 12 bits but database_codes have 10'),
    (lambda a: a.update(database_labels=a['database_labels'][:-1]),
     'database_codes has 40 rows but database_labels has 39'),
    (lambda a: a.update(query_labels=np.zeros((6, 4))),
     'query_labels have 4 classes but database_labels have 3'),
    (lambda a: a.update(query_codes=a['query_codes'] * 0.5),
     'query_codes: codes must be -1, +1'),
    (lambda a: a.update(database_labels=a['database_labels'] * 2),
     'database_labels: labels must be multi-hot 0/1'),
    (lambda a: a.update(query_codes=a['query_codes'][0]),
     'query_codes: expected a non-empty 2-D array'),
])
def test_bad_code_files_name_the_problem(tmp_path, change, message):
  arrays = small_set()
  change(arrays)
  np.savez(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(codes_lib.CodesError) as error:
    codes_lib.load_codes(tmp_path / 'bad.npz')
  assert message in str(error.value)
  assert 'bad.npz' in str(error.value)


@pytest.mark.parametrize('topk,ties', [(41, 'stable'), (0, 'stable'),
                                       (-2, 'tie_aware'), (5, 'random')])
def test_bad_topk_or_ties(topk, ties):
  with pytest.raises(ValueError, match='topk=|ties='):
    metrics.evaluate_codes(**small_set(), topk=topk, ties=ties)


def test_eval_cli_contract(tmp_path, fixtures_root):
  data = np.load(fixtures_root / 'multilabel' / 'tomm' / 'map.npz')
  codes_lib.save_codes(tmp_path / 'codes.npz', data['query_codes'],
                       data['db_codes'], data['query_labels'],
                       data['db_labels'])
  result = run('eval.py', f'--codes={tmp_path / "codes.npz"}', '--topk=500',
               '--ties=reference', f'--output_dir={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['map'] == pytest.approx(
      float(data['map_stable_refslice_top500']), abs=1e-6)
  assert (summary['topk'], summary['ties'], summary['num_queries'],
          summary['num_database'], summary['bits']) == (500, 'reference', 50,
                                                        2000, 24)
  saved = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert saved['map'] == summary['map'] and 'curves' in saved
  assert (tmp_path / 'out' / 'curves.png').stat().st_size > 0


def test_eval_cli_errors(tmp_path):
  arrays = small_set()
  codes_lib.save_codes(tmp_path / 'codes.npz', **arrays)
  result = run('eval.py', f'--codes={tmp_path / "codes.npz"}', '--topk=100')
  assert result.returncode != 0
  assert 'topk=100: use -1 (all) or 1..40' in result.stderr
  result = run('eval.py', f'--codes={tmp_path / "missing.npz"}')
  assert result.returncode != 0 and 'no such file' in result.stderr


def test_eval_cli_reads_torch_files(tmp_path):
  torch = pytest.importorskip('torch')
  arrays = small_set()
  args = []
  for key, value in arrays.items():
    torch.save(torch.from_numpy(np.asarray(value, np.float32)),
               tmp_path / f'{key}.t')
    args.append(f'--{key}_t={tmp_path / f"{key}.t"}')
  result = run('eval.py', *args)
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['map'] == pytest.approx(
      metrics.evaluate_codes(**arrays)['map'], abs=1e-9)


@pytest.mark.parametrize('bits', [12, 32])
def test_faiss_flat_round_trip(tmp_path, bits):
  arrays = small_set(bits, num_database=300)
  ids = np.arange(300) * 7 + 1000
  index = search.build_index(arrays['database_codes'], ids=ids)
  search.save_index(index, tmp_path / 'index.faiss')
  found_ids, distances = search.search(
      search.load_index(tmp_path / 'index.faiss'), arrays['query_codes'], 10)
  our_ids, our_distances = hamming.hamming_topk(arrays['query_codes'],
                                                arrays['database_codes'], 10)
  np.testing.assert_array_equal(distances, our_distances)
  brute = 0.5 * (bits - arrays['query_codes'] @ arrays['database_codes'].T)
  np.testing.assert_array_equal(
      distances, np.take_along_axis(brute, (found_ids - 1000) // 7, 1))


@pytest.mark.parametrize('kind', ['hash', 'multihash'])
def test_faiss_hash_indexes_return_true_distances(kind):
  arrays = small_set(16, num_database=300)
  index = search.build_index(arrays['database_codes'], kind=kind,
                             hash_bits=8)
  ids, distances = search.search(index, arrays['query_codes'], 5)
  brute = 0.5 * (16 - arrays['query_codes'] @ arrays['database_codes'].T)
  found = ids >= 0
  assert found.any()
  np.testing.assert_array_equal(
      distances[found],
      np.take_along_axis(brute, np.maximum(ids, 0), 1)[found])


def test_faiss_refuses_zero_bits():
  arrays = small_set()
  arrays['database_codes'][5, 2] = 0
  with pytest.raises(codes_lib.CodesError, match='row 5'):
    search.build_index(arrays['database_codes'])


def test_search_cli(tmp_path):
  arrays = small_set(24, num_database=100)
  codes_lib.save_codes(tmp_path / 'codes.npz', **arrays)
  index = tmp_path / 'index.faiss'
  built = run('-m', 'schn_jax.evaluation.search',
              f'--codes={tmp_path / "codes.npz"}', f'--build={index}')
  assert built.returncode == 0, built.stderr
  result = run('-m', 'schn_jax.evaluation.search', f'--index={index}',
               f'--codes={tmp_path / "codes.npz"}', '--k=3')
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert len(rows) == 6 and len(rows[0]['ids']) == 3
  _, expected = hamming.hamming_topk(arrays['query_codes'],
                                     arrays['database_codes'], 3)
  np.testing.assert_array_equal([row['distances'] for row in rows], expected)
