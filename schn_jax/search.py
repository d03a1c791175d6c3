"""Searches a codes file with query codes or query images; JSON lines and a PNG grid.

    python -m schn_jax.search --database=db.npz --queries=q.npz --index=flat --topk=10 --out=results.jsonl
    python -m schn_jax.search --database=db.npz --query_images=FOLDER --out=results.jsonl --grid=results.png

The codes files are written by `python -m schn_jax.encode`. --query_images
encodes the query images on the fly with the run and code length that encoded
the database (or --workdir / --bits).

--index is `flat` (exact) or any faiss.index_binary_factory string: BHash16,
BHash4x16, BIVF256, BHNSW32, ... (see docs/evaluation.md). --save_index writes
the index, --load_index reads it instead of building one. --radius=R returns
every database item within Hamming distance R (at most --topk of them when
--topk is given).

Each line of --out: {"query": path, "labels": [...], "neighbors": [{"path",
"distance", "labels", "correct"}, ...]}, neighbours ordered by distance, then
by database order; labels and correct (shares a label with the query) only
where both sides have labels.
"""

import contextlib
import logging
import sys

from absl import flags

from schn_jax import errors, files, inference, retrieval
from schn_jax.data import image_sets
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import indexes

_DATABASE = flags.DEFINE_string("database", None, "Codes file of the database.")
_QUERIES = flags.DEFINE_string("queries", None, "Codes file of the queries.")
_QUERY_IMAGES = flags.DEFINE_string(
  "query_images",
  None,
  "Query images to encode: folder, image-list file, .npz of images or tfds:NAME:SPLIT.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "With --query_images: the run "
  "(or exported model file) to encode them with "
  "(default: the database's).",
)
_BITS = flags.DEFINE_integer(
  "bits", None, "With --query_images: code length (default: the database's)."
)
_ROOT = flags.DEFINE_string("root", None, "Query image list: the folder its paths are relative to.")
_CLASS_FOLDERS = flags.DEFINE_bool(
  "class_folders", False, "Query image folder: the first level names the class."
)
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
_INDEX = flags.DEFINE_string("index", indexes.FLAT, "flat or a faiss.index_binary_factory string.")
_TOPK = flags.DEFINE_integer("topk", 10, "Neighbours per query.")
_RADIUS = flags.DEFINE_integer(
  "radius", None, "Radius search: every item within this Hamming distance."
)
_NPROBE = flags.DEFINE_integer("nprobe", None, "IVF indexes: lists visited.")
_NFLIP = flags.DEFINE_integer("nflip", None, "Hash indexes: bits flipped.")
_EF_SEARCH = flags.DEFINE_integer("ef_search", None, "HNSW indexes: efSearch.")
_LOAD_INDEX = flags.DEFINE_string(
  "load_index",
  None,
  "Read this index file (of --database) instead of building one; --index is then not used.",
)
_SAVE_INDEX = flags.DEFINE_string("save_index", None, "Write the index here.")
_OUT = flags.DEFINE_string("out", "-", "JSON lines file; - for stdout.")
_GRID = flags.DEFINE_string("grid", None, "Also draw the results as a PNG here.")
_GRID_QUERIES = flags.DEFINE_integer("grid_queries", 8, "Queries (rows) in the grid.")
_GRID_NEIGHBORS = flags.DEFINE_integer("grid_neighbors", 8, "Neighbours per row.")
flags.mark_flag_as_required("database")


def query_codes_and_set(database):
  """(query ItemCodes, the query image set or None) from the flags."""
  if _QUERIES.value and _QUERY_IMAGES.value:
    raise errors.UserError("give --queries (codes) or --query_images, not both.")
  if _QUERIES.value:
    queries = codes_lib.load_item_codes(_QUERIES.value)
    if (
      queries.model
      and database.model
      and (queries.model.get("workdir"), queries.model.get("step"))
      != (database.model.get("workdir"), database.model.get("step"))
    ):
      logging.warning(
        "the queries and the database were encoded by different "
        "checkpoints (%s, %s); their distances may mean little.",
        queries.model,
        database.model,
      )
    return queries, None
  location = _WORKDIR.value or database.model.get("weights") or database.model.get("workdir")
  if not location:
    raise errors.UserError(
      f"{_DATABASE.value} does not name the run that encoded it: give --workdir."
    )
  bits = _BITS.value or database.bits
  step = None if _WORKDIR.value else database.model.get("step")
  model = inference.load(location, bits, step)
  query_set = image_sets.open_images(
    _QUERY_IMAGES.value,
    root=_ROOT.value,
    class_folders=_CLASS_FOLDERS.value,
    tfds_data_dir=_TFDS_DATA_DIR.value,
    channels=model.channels,
  )
  return retrieval.encode_set(model, query_set, progress=True), query_set


def check_outputs(database):
  """Refuses --out, --save_index or --grid naming an input (or each other)."""
  inputs = [
    (f"--{flag.name}", flag.value)
    for flag in (_DATABASE, _QUERIES, _LOAD_INDEX, _QUERY_IMAGES, _WORKDIR)
    if flag.value and not flag.value.startswith("tfds:")
  ]
  outputs = [("--out", None if _OUT.value == "-" else _OUT.value)]
  outputs += [("--save_index", _SAVE_INDEX.value), ("--grid", _GRID.value)]
  if _SAVE_INDEX.value:
    outputs.append(("--save_index", _SAVE_INDEX.value + ".codes.json"))
  run = _WORKDIR.value or (_QUERY_IMAGES.value and database.model.get("workdir"))
  files.check_outputs(outputs, inputs, folders=[("the run folder", run or None)])
  images = None
  if _GRID.value and database.source:
    with contextlib.suppress(errors.UserError):
      images = image_sets.open_spec(database.source)
  if images is not None and images.reads(_GRID.value):
    raise files.PathError(f"--grid={_GRID.value} is one of the database's images: write elsewhere.")


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  # Orbax and JAX log routine steps (checkpoint reads, backends) at INFO.
  for name in ("absl", "jax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  for flag in (_GRID_QUERIES, _GRID_NEIGHBORS):
    if flag.value < 1:
      raise errors.UserError(f"--{flag.name}={flag.value}: give a positive number.")
  database = codes_lib.load_item_codes(_DATABASE.value)
  check_outputs(database)
  if not (_QUERIES.value or _QUERY_IMAGES.value):
    if not _SAVE_INDEX.value:
      raise errors.UserError(
        "give --queries or --query_images to search, or --save_index to only build an index."
      )
    index = indexes.build_index(database.codes, _INDEX.value)
    indexes.save_index(index, _SAVE_INDEX.value, database.codes)
    print(f"{_SAVE_INDEX.value}: {_INDEX.value} index of {len(database)} codes")
    return
  queries, query_set = query_codes_and_set(database)
  topk = _TOPK.value if _RADIUS.value is None or flags.FLAGS["topk"].present else None
  results = retrieval.search_codes(
    database,
    queries.codes,
    index=_INDEX.value,
    k=topk,
    radius=_RADIUS.value,
    index_file=_LOAD_INDEX.value,
    save_index_to=_SAVE_INDEX.value,
    nprobe=_NPROBE.value,
    nflip=_NFLIP.value,
    ef_search=_EF_SEARCH.value,
  )
  records = retrieval.result_records(
    queries.paths,
    (queries.labels, queries.label_names),
    database,
    results,
    asked=topk if _RADIUS.value is None else None,
  )
  short = sum("asked" in record for record in records)
  if short:
    logging.warning(
      "%d of %d queries got fewer than %d neighbours from index %s (their lines say "
      '"asked"); search more of it (--nprobe, --nflip, --ef_search) or use --index=flat.',
      short,
      len(records),
      topk,
      _LOAD_INDEX.value or _INDEX.value,
    )
  retrieval.write_jsonl(records, sys.stdout if _OUT.value == "-" else _OUT.value)
  if _GRID.value:
    channels = 3
    query_set = query_set or retrieval.open_set_of(queries, channels, "queries codes file")
    database_set = retrieval.open_set_of(database, channels, "database codes file")
    retrieval.draw_grid(
      records,
      query_set,
      database_set,
      _GRID.value,
      max_queries=_GRID_QUERIES.value,
      max_neighbors=_GRID_NEIGHBORS.value,
    )


def cli():
  errors.run(main)


if __name__ == "__main__":
  cli()
