"""Retrieval end to end: train the tiny config, encode a folder, index, search by image."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from schn_jax import errors, inference, retrieval, run_folder
from schn_jax.data import image_sets
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import indexes, plots
from schn_jax.interop import weights

import support

pytestmark = support.needs_fashion_mnist
cli = support.cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return support.tiny_retrieval_run(tmp_path_factory.mktemp("retrieval"))


def test_encode_index_and_search_by_image(run, tmp_path):
  workdir, database_folder, query_folder = run
  bits = tiny.get_config().code_lengths[0]
  # The contract's encode command.
  encoded = cli(
    "schn_jax.encode",
    f"--workdir={workdir}",
    f"--bits={bits}",
    f"--images={database_folder}",
    f"--out={tmp_path / 'db.npz'}",
    "--class_folders",
  )
  assert encoded.returncode == 0, encoded.stderr
  with np.load(tmp_path / "db.npz") as saved:
    assert saved["codes"].dtype == np.float32 and saved["codes"].shape == (150, bits)
    assert set(np.unique(saved["codes"])) <= {-1.0, 1.0}
    assert saved["packed"].dtype == np.uint8 and saved["packed"].shape == (150, bits // 8)
    written = sorted(
      p.relative_to(database_folder).as_posix() for p in database_folder.rglob("*.png")
    )
    assert saved["paths"].tolist() == written
  assert not (tmp_path / "db.npz.parts").exists()
  database = codes_lib.load_item_codes(tmp_path / "db.npz")
  assert database.label_names.tolist() == sorted(support.CLASSES)

  # The same codes as the model encoding the images directly.
  model = inference.TrainedModel.from_workdir(workdir, bits)
  images = image_sets.FolderImages(database_folder, channels=model.channels)
  direct = model.encode(np.stack([model.preprocess(images.image(i)) for i in range(len(images))]))
  np.testing.assert_array_equal(database.codes, retrieval.binarize(direct))
  query_set = image_sets.FolderImages(query_folder, class_folders=True, channels=model.channels)
  retrieval.encode_to_file(model, query_set, tmp_path / "q.npz", progress=False)
  queries = codes_lib.load_item_codes(tmp_path / "q.npz")
  exact_ids, exact_distances = support.exact_topk(queries.codes, database.codes, 10)

  # The contract's search command, flat index: the exact ranking, ties included.
  searched = cli(
    "schn_jax.search",
    f"--database={tmp_path / 'db.npz'}",
    f"--queries={tmp_path / 'q.npz'}",
    "--index=flat",
    "--topk=10",
    f"--out={tmp_path / 'results.jsonl'}",
  )
  assert searched.returncode == 0, searched.stderr
  flat = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [r["query"] for r in flat] == queries.paths.tolist()
  for record, ids, distances in zip(flat, exact_ids, exact_distances):
    assert [n["path"] for n in record["neighbors"]] == database.paths[ids].tolist()
    assert [n["distance"] for n in record["neighbors"]] == distances.tolist()

  # Search by image with a second kind of index (IVF visiting every list),
  # saved for reuse, and the PNG grid.
  by_image = cli(
    "schn_jax.search",
    f"--database={tmp_path / 'db.npz'}",
    f"--query_images={query_folder}",
    "--class_folders",
    "--index=BIVF4",
    "--nprobe=4",
    "--topk=5",
    f"--save_index={tmp_path / 'ivf.faiss'}",
    f"--out={tmp_path / 'ivf.jsonl'}",
    f"--grid={tmp_path / 'grid.png'}",
  )
  assert by_image.returncode == 0, by_image.stderr
  ivf = [json.loads(line) for line in (tmp_path / "ivf.jsonl").read_text().splitlines()]
  assert [r["query"] for r in ivf] == queries.paths.tolist()
  brute = 0.5 * (bits - queries.codes @ database.codes.T)
  for q, record in enumerate(ivf):
    distances = [n["distance"] for n in record["neighbors"]]
    assert distances == exact_distances[q, :5].tolist()
    positions = np.searchsorted(database.paths, [n["path"] for n in record["neighbors"]])
    np.testing.assert_array_equal(brute[q, positions], distances)
    closer = np.array(distances) < distances[-1]
    assert set(positions[closer]) == set(exact_ids[q, :5][closer])
    for neighbor in record["neighbors"]:
      assert neighbor["correct"] == (neighbor["labels"] == record["labels"])

  # The grid: one row per query (8 at most), query then 5 neighbours, borders
  # coloured by correctness.
  layout = plots.GridLayout(8, 5, 96)
  with Image.open(tmp_path / "grid.png") as grid:
    assert grid.size == (layout.width, layout.height)
    pixels = np.asarray(grid.convert("RGB"))
  for r, record in enumerate(ivf[:8]):
    left, top = layout.cell(r, -1)
    assert tuple(pixels[top + 1, left + 1]) == plots.GRID_COLORS["query"]
    for c, neighbor in enumerate(record["neighbors"]):
      left, top = layout.cell(r, c)
      assert tuple(pixels[top + 1, left + 1]) == plots.GRID_COLORS[neighbor["correct"]]

  # The saved index, loaded, gives the same results.
  reloaded = retrieval.search_codes(
    database, queries.codes, k=5, index_file=tmp_path / "ivf.faiss", nprobe=4
  )
  for record, (ids, _) in zip(ivf, reloaded):
    assert [n["path"] for n in record["neighbors"]] == database.paths[ids].tolist()


def test_interrupted_encode_resumes_without_redoing_shards(run, tmp_path, monkeypatch):
  workdir, database_folder, _ = run
  model = inference.TrainedModel.from_workdir(workdir)
  images = image_sets.FolderImages(database_folder, channels=model.channels)
  hash_batch = support.interrupt_hashing_after(monkeypatch, model, 2)
  out = tmp_path / "codes.npz"
  with pytest.raises(KeyboardInterrupt):
    retrieval.encode_to_file(model, images, out, batch_size=32, shard_size=32, progress=False)
  assert sorted(p.name for p in (tmp_path / "codes.npz.parts").glob("shard_*")) == [
    "shard_000000.npy",
    "shard_000001.npy",
  ]
  assert not out.exists()
  calls = []
  monkeypatch.setattr(model.encoder, "hash", lambda batch: calls.append(1) or hash_batch(batch))
  resumed = retrieval.encode_to_file(
    model, images, out, batch_size=32, shard_size=32, progress=False
  )
  assert len(calls) == 3  # 150 images: shards 2, 3 and 4 of 32, 32 and 22
  monkeypatch.setattr(model.encoder, "hash", hash_batch)
  straight = retrieval.encode_set(model, images, batch_size=32)
  np.testing.assert_array_equal(resumed.codes, straight.codes)
  np.testing.assert_array_equal(codes_lib.load_item_codes(out).codes, straight.codes)
  assert not (tmp_path / "codes.npz.parts").exists()


def test_user_errors_are_one_line_exit_2(run, tmp_path):
  workdir, database_folder, _ = run
  broken = tmp_path / "broken"
  broken.mkdir()
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(broken / "fine.png")
  (broken / "unreadable.png").write_bytes(b"\x89PNG not really")
  cases = [
    (
      (
        "schn_jax.encode",
        f"--workdir={workdir}",
        f"--images={tmp_path / 'missing'}",
        f"--out={tmp_path / 'x.npz'}",
      ),
      f"{tmp_path / 'missing'}: no such folder or file",
    ),
    (
      (
        "schn_jax.encode",
        f"--workdir={workdir}",
        f"--images={broken}",
        f"--out={tmp_path / 'x.npz'}",
      ),
      f"cannot read image {broken / 'unreadable.png'}",
    ),
  ]
  for args, message in cases:
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr

  # Codes of another length than the index / the database.
  model = inference.TrainedModel.from_workdir(workdir)
  images = image_sets.FolderImages(database_folder, channels=model.channels)
  database = retrieval.encode_set(model, images)
  codes_lib.save_item_codes(tmp_path / "db.npz", database)
  other = codes_lib.ItemCodes(np.ones((2, 24), np.float32), None, np.array(["a", "b"]))
  codes_lib.save_item_codes(tmp_path / "q24.npz", other)
  result = cli(
    "schn_jax.search", f"--database={tmp_path / 'db.npz'}", f"--queries={tmp_path / 'q24.npz'}"
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
    "error: the queries have 24-bit codes, the database 16-bit codes: encode "
    "both with the same --bits."
  )
  index24 = indexes.build_index(np.ones((150, 24)))
  indexes.save_index(index24, tmp_path / "i24.faiss", np.ones((150, 24)))
  with pytest.raises(
    errors.UserError, match="i24.faiss holds 24-bit codes but the codes have 16 bits"
  ):
    retrieval.search_codes(database, database.codes, index_file=tmp_path / "i24.faiss")


def test_trained_model_refuses_what_it_cannot_restore(run, tmp_path, monkeypatch):
  workdir, _, _ = run
  monkeypatch.chdir(workdir.parent)
  assert inference.TrainedModel.from_workdir(workdir.name).step == 1  # a relative path
  with pytest.raises(
    errors.UserError,
    match=r"bits_32/checkpoints: no checkpoint of "
    r"32-bit codes; this run has checkpoints for \[16\]",
  ):
    inference.TrainedModel.from_workdir(workdir, bits=32)
  with pytest.raises(errors.UserError, match="config.json not found"):
    inference.TrainedModel.from_workdir(tmp_path)
  # A config whose code length does not fit the checkpoint's shapes.
  with pytest.raises(
    errors.UserError, match="does not fit the run.s config.json: visual/hash/linear/bias"
  ):
    checkpoints = run_folder.Checkpoints(workdir, 16, read_only=True)
    checkpoints.read(run_folder.read_config(workdir), 24)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_exported_model_encodes_like_the_run(run, tmp_path, suffix):
  workdir, _, query_folder = run
  model = inference.TrainedModel.from_workdir(workdir)
  model.export(tmp_path / f"model{suffix}")
  shared = inference.load(tmp_path / f"model{suffix}")
  assert (shared.bits, shared.step, shared.workdir) == (model.bits, model.step, None)
  images = image_sets.FolderImages(query_folder, channels=model.channels)
  batch = np.stack([model.preprocess(images.image(i)) for i in range(len(images))])
  np.testing.assert_array_equal(shared.hash(batch), model.hash(batch))
  with pytest.raises(errors.UserError, match="holds the bits=16 model, not bits=32"):
    inference.load(tmp_path / f"model{suffix}", bits=32)


def test_whole_model_weights_round_trip(run, tmp_path):
  workdir, _, _ = run
  saved = run_folder.read_checkpoint(workdir, whole=True)
  params, step = saved.variables["params"], saved.step
  assert set(params) == {"visual", "semantic", "cycle"}
  weights.save_params(params, tmp_path / "schn.safetensors")
  loaded, _ = weights.load_params(tmp_path / "schn.safetensors", params)
  for name, value in weights.params_to_arrays(params).items():
    np.testing.assert_array_equal(weights.params_to_arrays(loaded)[name], value)
  assert step == 1
