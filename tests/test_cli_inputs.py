"""The retrieval commands (encode, search, export, eval, and train's workdir) under
bad or unusual input, one table row per case, in five classes:

  loss      an output path that names an input (or another output);
  wrong     input that used to give a wrong answer with exit status 0;
  unwritable an output path that cannot be written;
  readable  input a person can read but the code could not (encodings, sizes);
  range     numbers outside what the index or the command takes.

Each refused case must exit with status 2, print exactly one `error: ...` line
naming the culprit and no traceback, and leave every input byte-identical.
Cases that must succeed (a list file with a byte-order mark, a grid whose images
moved, short search results) are checked below the table.
"""

import hashlib
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from schn_jax import inference, retrieval
from schn_jax.data import image_sets
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import indexes

import support

pytestmark = support.needs_fashion_mnist


def huge_png(path, side=20000):
  """A valid PNG header announcing side x side pixels (more than PIL's
  decompression-bomb limit), with one row of data."""
  Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
  data = bytearray(path.read_bytes())
  # IHDR: 8-byte signature, 4-byte length, b"IHDR", width, height, ... then CRC.
  data[16:24] = struct.pack(">II", side, side)
  data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
  path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Every input the cases read, under one folder."""
  root = tmp_path_factory.mktemp("inputs")
  run, database_folder, query_folder = support.tiny_retrieval_run(root)
  model = inference.TrainedModel.from_workdir(run)
  database = retrieval.encode_to_file(
    model,
    image_sets.FolderImages(database_folder, class_folders=True, channels=1),
    root / "db.npz",
    progress=False,
  )
  retrieval.encode_to_file(
    model,
    image_sets.FolderImages(query_folder, class_folders=True, channels=1),
    root / "q.npz",
    progress=False,
  )
  indexes.save_index(indexes.build_index(database.codes), root / "db.faiss", database.codes)
  other = database.codes.copy()
  other[0] *= -1  # same count and length, one code different
  indexes.save_index(indexes.build_index(other), root / "other.faiss", other)
  images = np.zeros((5, 28, 28), np.uint8)
  np.savez(root / "arrays.npz", images=images, labels=np.array([0, 1, 2, 1, 0]))
  np.savez(root / "minus_one.npz", images=images, labels=np.array([0, 1, -1, 1, 0]))
  np.savez(root / "empty.npz", images=np.zeros((0, 28, 28), np.uint8))
  first = sorted(database_folder.rglob("*.png"))[:3]
  lines = "".join(f"{p.relative_to(database_folder).as_posix()} 1\n" for p in first)
  (database_folder / "list.txt").write_text(lines)
  (database_folder / "utf16.txt").write_text(lines, encoding="utf-16")
  (database_folder / "bom.txt").write_text(lines, encoding="utf-8-sig")
  (database_folder / "latin1.txt").write_bytes("caf\xe9.png 1\n".encode("latin-1"))
  (root / "bomb").mkdir()
  huge_png(root / "bomb" / "huge.png")
  codes_lib.save_codes(
    root / "eval_codes.npz",
    database.codes[:10],
    database.codes,
    database.labels[:10],
    database.labels,
  )
  return {
    "root": root,
    "run": run,
    "db_folder": database_folder,
    "q_folder": query_folder,
    "db_image": first[0],
  }


def digest(root):
  """SHA-1 of every file below `root`, by relative path."""
  return {
    p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
    for p in sorted(root.rglob("*"))
    if p.is_file()
  }


SEARCH = ("schn_jax.search", "--database={root}/db.npz", "--queries={root}/q.npz")
ENCODE = ("schn_jax.encode", "--workdir={run}")
LONG_NAME = "x" * 300

# (id, command and arguments ({root}, {run}, {db_folder}, {db_image}, {out}: the
# world's paths and a fresh output folder), what the error line must contain).
CASES = [
  # loss: an output naming an input, or two outputs naming one file
  ("loss-search-out-db", (*SEARCH, "--out={root}/db.npz"), "would overwrite --database="),
  ("loss-search-out-queries", (*SEARCH, "--out={root}/q.npz"), "would overwrite --queries="),
  (
    "loss-save-index-db",
    ("schn_jax.search", "--database={root}/db.npz", "--save_index={root}/db.npz"),
    "would overwrite --database=",
  ),
  (
    "loss-out-is-grid",
    (*SEARCH, "--out={out}/r.png", "--grid={out}/r.png"),
    "--out and --grid both name",
  ),
  ("loss-grid-db-image", (*SEARCH, "--grid={db_image}"), "is one of the database's images"),
  (
    "loss-encode-out-images-npz",
    (*ENCODE, "--images={root}/arrays.npz", "--out={root}/arrays.npz"),
    "would overwrite --images=",
  ),
  (
    "loss-encode-out-relative-spelling",
    (*ENCODE, "--images={root}/arrays.npz", "--out={root}/bomb/../arrays.npz"),
    "would overwrite --images=",
  ),
  (
    "loss-encode-out-list",
    (*ENCODE, "--images={db_folder}/list.txt", "--out={db_folder}/list.txt"),
    "would overwrite --images=",
  ),
  (
    "loss-encode-out-an-image",
    (*ENCODE, "--images={db_folder}", "--out={db_image}"),
    "is one of the images to encode",
  ),
  (
    "loss-export-into-run",
    ("schn_jax.export", "--workdir={run}", "--out={run}/model.safetensors"),
    "is inside the run folder",
  ),
  (
    "loss-eval-output-in-run",
    ("eval.py", "--workdir={run}", "--output_dir={run}"),
    "is inside the run folder",
  ),
  # wrong: answers that used to come back with exit status 0
  (
    "wrong-index-of-other-codes",
    (*SEARCH, "--load_index={root}/other.faiss"),
    "not built from these database codes",
  ),
  (
    "wrong-label-minus-one",
    (*ENCODE, "--images={root}/minus_one.npz", "--out={out}/c.npz"),
    "labels[2] = -1",
  ),
  ("wrong-hnsw-ef-zero", (*SEARCH, "--index=BHNSW8", "--ef_search=0"), "ef_search=0"),
  (
    "wrong-hash-wider-than-codes",
    (*SEARCH, "--index=BHash24"),
    "hashes 24 bits but the codes have 16",
  ),
  ("wrong-multihash-wider", (*SEARCH, "--index=BHash4x8"), "FAISS cannot build it for 16-bit"),
  ("wrong-nprobe-zero", (*SEARCH, "--index=BIVF4", "--nprobe=0"), "nprobe=0"),
  ("wrong-nflip-past-hash", (*SEARCH, "--index=BHash8", "--nflip=9"), "nflip=9"),
  # unwritable: outputs that cannot be written
  ("unwritable-search-no-folder", (*SEARCH, "--out={out}/missing/r.jsonl"), "no such folder"),
  ("unwritable-search-folder", (*SEARCH, "--out={out}"), "is a folder"),
  ("unwritable-search-long-name", (*SEARCH, f"--out={{out}}/{LONG_NAME}.jsonl"), "cannot write it"),
  ("unwritable-grid-no-folder", (*SEARCH, "--grid={out}/missing/g.png"), "no such folder"),
  (
    "unwritable-encode-no-folder",
    (*ENCODE, "--images={root}/arrays.npz", "--out={out}/missing/c.npz"),
    "no such folder",
  ),
  (
    "unwritable-encode-folder",
    (*ENCODE, "--images={root}/arrays.npz", "--out={out}"),
    "is a folder",
  ),
  (
    "unwritable-export-no-folder",
    ("schn_jax.export", "--workdir={run}", "--out={out}/missing/m.safetensors"),
    "no such folder",
  ),
  (
    "unwritable-export-long-name",
    ("schn_jax.export", "--workdir={run}", f"--out={{out}}/{LONG_NAME}.safetensors"),
    "cannot write it",
  ),
  (
    "unwritable-eval-output-is-file",
    ("eval.py", "--codes={root}/eval_codes.npz", "--output_dir={root}/q.npz"),
    "is a file: give a folder",
  ),
  (
    "unwritable-train-workdir-is-file",
    ("train.py", "--config=configs/tiny.py", "--workdir={root}/q.npz"),
    "is a file: give a folder",
  ),
  # readable: files a person reads that the code did not
  (
    "readable-utf16-list",
    (*ENCODE, "--images={db_folder}/utf16.txt", "--out={out}/c.npz"),
    "is UTF-16",
  ),
  (
    "readable-latin1-list",
    (*ENCODE, "--images={db_folder}/latin1.txt", "--out={out}/c.npz"),
    "latin1.txt:1: this list file is not UTF-8",
  ),
  (
    "readable-empty-array",
    (*ENCODE, "--images={root}/empty.npz", "--out={out}/c.npz"),
    "holds no image",
  ),
  ("readable-misspelt-tfds", (*ENCODE, "--images=tfds:cifr10:test", "--out={out}/c.npz"), "cifr10"),
  (
    "readable-huge-image",
    (*ENCODE, "--images={root}/bomb", "--out={out}/c.npz"),
    "cannot read image",
  ),
  # range: numbers out of range
  ("range-huge-radius", (*SEARCH, "--radius=1000000000000"), "radius=1000000000000"),
  ("range-negative-radius", (*SEARCH, "--radius=-1"), "radius=-1"),
  ("range-negative-nprobe", (*SEARCH, "--index=BIVF4", "--nprobe=-3"), "nprobe=-3"),
  ("range-huge-nprobe", (*SEARCH, "--index=BIVF4", "--nprobe=5"), "nprobe=5"),
  ("range-topk-zero", (*SEARCH, "--topk=0"), "k=0"),
  ("range-grid-queries", (*SEARCH, "--grid={out}/g.png", "--grid_queries=0"), "--grid_queries=0"),
  (
    "range-encode-batch",
    (*ENCODE, "--images={root}/arrays.npz", "--out={out}/c.npz", "--batch_size=0"),
    "--batch_size=0",
  ),
  ("range-eval-topk", ("eval.py", "--codes={root}/eval_codes.npz", "--topk=-7"), "topk=-7"),
]


def run_case(world, args, out):
  names = {key: world[key] for key in ("root", "run", "db_folder", "db_image")} | {"out": out}
  command = [arg.format(**names) for arg in args]
  if command[0].endswith(".py"):
    return support.cli(command[0].removesuffix(".py"), *command[1:])
  return support.cli(*command)


@pytest.mark.parametrize("args, message", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_inputs_untouched(world, tmp_path, args, message):
  before = digest(world["root"])
  result = run_case(world, args, tmp_path)
  errors_printed = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors_printed) == 1 and message in errors_printed[0], result.stderr[-3000:]
  assert digest(world["root"]) == before
  left = [p.name for p in tmp_path.rglob("*")]
  assert not left, f"left behind: {left}"


def test_a_list_file_with_a_byte_order_mark_is_read(world, tmp_path):
  result = run_case(world, (*ENCODE, "--images={db_folder}/bom.txt", "--out={out}/c.npz"), tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  plain = run_case(world, (*ENCODE, "--images={db_folder}/list.txt", "--out={out}/p.npz"), tmp_path)
  assert plain.returncode == 0, plain.stderr[-3000:]
  bom, no_bom = (codes_lib.load_item_codes(tmp_path / name) for name in ("c.npz", "p.npz"))
  assert bom.paths.tolist() == no_bom.paths.tolist() and len(bom) == 3
  np.testing.assert_array_equal(bom.codes, no_bom.codes)


def test_short_results_are_said_per_query_and_on_stderr(world, tmp_path):
  # 150 codes in 4 inverted lists, one list visited: no list holds 100 codes.
  result = run_case(
    world, (*SEARCH, "--index=BIVF4", "--topk=100", "--out={out}/r.jsonl"), tmp_path
  )
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
  short = [r for r in records if len(r["neighbors"]) < 100]
  assert short and all(r["asked"] == 100 for r in short)
  assert all("asked" not in r for r in records if len(r["neighbors"]) == 100)
  assert f"{len(short)} of {len(records)} queries got fewer than 100 neighbours" in result.stderr
  # A database smaller than k is not short: every item comes back.
  whole = run_case(world, (*SEARCH, "--topk=500", "--out={out}/all.jsonl"), tmp_path)
  assert whole.returncode == 0, whole.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
  assert all(len(r["neighbors"]) == 150 and "asked" not in r for r in records)


def test_grid_draws_moved_images_and_any_file_name(world, tmp_path):
  folder = tmp_path / "named"
  shutil.copytree(world["q_folder"], folder)
  odd = folder / "bag" / "line\nbreak é.png"
  shutil.copyfile(next(folder.rglob("*.png")), odd)
  model = inference.TrainedModel.from_workdir(world["run"])
  retrieval.encode_to_file(
    model, image_sets.FolderImages(folder, channels=1), tmp_path / "named.npz", progress=False
  )
  shutil.copytree(world["db_folder"], tmp_path / "moved_db")
  retrieval.encode_to_file(
    model,
    image_sets.FolderImages(tmp_path / "moved_db", channels=1),
    tmp_path / "moved.npz",
    progress=False,
  )
  shutil.rmtree(tmp_path / "moved_db")
  result = support.cli(
    "schn_jax.search",
    f"--database={tmp_path / 'moved.npz'}",
    f"--queries={tmp_path / 'named.npz'}",
    f"--out={tmp_path / 'r.jsonl'}",
    f"--grid={tmp_path / 'grid.png'}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "drawn blank" in result.stderr
  with Image.open(tmp_path / "grid.png") as grid:
    assert grid.width > 0
  queries = [json.loads(line)["query"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
  assert "bag/line\nbreak é.png" in queries


def test_a_resumed_encode_encodes_changed_images_again(world, tmp_path, monkeypatch):
  folder = tmp_path / "images"
  shutil.copytree(world["db_folder"], folder, ignore=shutil.ignore_patterns("*.txt"))
  model = inference.TrainedModel.from_workdir(world["run"])
  images = image_sets.FolderImages(folder, channels=1)
  before = retrieval.encode_set(model, images).codes
  # The replacement is an image whose code differs from image 0's, so that
  # keeping the stale shard would show.
  donor = next(i for i in range(1, len(before)) if (before[i] != before[0]).any())
  hash_batch = support.interrupt_hashing_after(monkeypatch, model, 2)
  with pytest.raises(KeyboardInterrupt):
    retrieval.encode_to_file(
      model, images, tmp_path / "c.npz", batch_size=32, shard_size=32, progress=False
    )
  # Image 0 of the first shard is replaced by another after the interruption.
  replaced = folder / images.paths[0]
  shutil.copyfile(folder / images.paths[donor], replaced)
  os.utime(replaced, ns=(10**18, 10**18))
  monkeypatch.setattr(model.encoder, "hash", hash_batch)
  images = image_sets.FolderImages(folder, channels=1)
  resumed = retrieval.encode_to_file(
    model, images, tmp_path / "c.npz", shard_size=32, progress=False
  )
  straight = retrieval.encode_set(model, images)
  np.testing.assert_array_equal(resumed.codes, straight.codes)
  np.testing.assert_array_equal(resumed.codes[0], before[donor])
