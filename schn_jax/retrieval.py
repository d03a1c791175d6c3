"""Retrieval with a trained model: encode image sets to codes files, search them,
and turn results into JSON records and a PNG grid.

The pieces live below: `inference.TrainedModel` (restore, encode),
`data.image_sets` (where images come from), `evaluation.codes` (the codes
file), `evaluation.indexes` (FAISS indexes), `evaluation.plots` (the grid).
The command lines `python -m schn_jax.encode` and `python -m schn_jax.search`
are thin wrappers around this module.
"""

import hashlib
import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import tqdm

from schn_jax import errors, files
from schn_jax.data import image_sets, pipeline
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import indexes, plots

SHARD_SIZE = 4096


# ---------------------------------------------------------------- encoding


def binarize(signs):
  """sign(U) in {-1, 0, +1} -> {-1, +1}: a bit at exactly 0 becomes +1, since
  FAISS and the packed codes have no unset bit."""
  return np.where(signs < 0, -1.0, 1.0).astype(np.float32)


def encode_set(
  model, image_set, *, batch_size=256, progress=False, shard_size=None, parts_dir=None
):
  """Codes of every image of `image_set` as an ItemCodes.

  The images go through the run's test transform, `batch_size` at a time
  (rounded up to a multiple of the device count; batches are split over the
  devices). With `parts_dir`, every `shard_size` images are saved there as
  they are done, and shards already there (from an interrupted call with the
  same inputs) are not encoded again.
  """
  if image_set.channels != model.channels:
    raise ValueError(
      f"image set has {image_set.channels} channels, the model reads {model.channels}"
    )
  batch_size = model.encoder.rounded_batch_size(batch_size)
  shard_size = shard_size or SHARD_SIZE
  num_items = len(image_set)
  shards = range(0, num_items, shard_size)
  if parts_dir is not None:
    parts_dir = _prepare_parts(parts_dir, model, image_set, shard_size)
  loader = pipeline.Loader(image_set, model.config.data)
  out = []
  try:
    with tqdm.tqdm(
      total=num_items, unit="image", desc=f"encode {model.bits} bits", disable=not progress
    ) as bar:
      for number, start in enumerate(shards):
        errors.check_interrupted()
        stop = min(start + shard_size, num_items)
        shard_path = parts_dir / f"shard_{number:06d}.npy" if parts_dir else None
        if shard_path is not None and shard_path.is_file():
          out.append(np.load(shard_path))
          bar.update(stop - start)
          continue
        batches = loader.batches(np.arange(start, stop), batch_size, train=False)
        shard = binarize(model.encoder.signs(_counted(batches, bar), stop - start))
        if shard_path is not None:
          _save_atomically(shard_path, shard)
        out.append(shard)
  finally:
    loader.close()
  labels = image_set.labels.astype(np.uint8) if image_set.num_classes else None
  return codes_lib.ItemCodes(
    np.concatenate(out),
    codes_lib.pack_signs(np.concatenate(out)),
    image_set.paths,
    labels,
    image_set.label_names,
    image_set.spec,
    model.identity(),
  )


def encode_to_file(model, image_set, out_path, *, batch_size=256, shard_size=None, progress=True):
  """Encodes `image_set` into the codes file `out_path`, restartably.

  Shards go to `<out_path>.parts/` while the work is under way; the file is
  written once every shard is done (under a temporary name, then renamed),
  and the shards are then removed. Running the same command again after an
  interruption encodes only the shards that are missing.
  """
  out_path = pathlib.Path(out_path)
  if jax.process_count() > 1:
    # Every process would write the same shards; one process already uses
    # all of its machine's devices.
    raise errors.UserError("encoding to a file runs in a single process.")
  files.check_writable("--out", out_path)
  parts_dir = out_path.with_name(out_path.name + ".parts")
  try:
    item_codes = encode_set(
      model,
      image_set,
      batch_size=batch_size,
      progress=progress,
      shard_size=shard_size,
      parts_dir=parts_dir,
    )
  except BaseException:
    # Finished shards stay for the next run; a folder without any is litter.
    if parts_dir.is_dir() and not any(parts_dir.glob("shard_*.npy")):
      shutil.rmtree(parts_dir)
    raise
  codes_lib.save_item_codes(out_path, item_codes)
  shutil.rmtree(parts_dir)
  return item_codes


def _prepare_parts(parts_dir, model, image_set, shard_size):
  """Creates parts_dir with a manifest of the inputs, one fingerprint per shard.

  Shards left by other inputs (model, image list, shard size) are removed
  first; of shards left by the same inputs, those whose images changed since
  (`image_set.fingerprint`) are removed, to be encoded again.
  """
  parts_dir = pathlib.Path(parts_dir)
  manifest = {
    "model": model.identity(),
    "source": image_set.spec,
    "num_items": len(image_set),
    "shard_size": shard_size,
    "paths_sha1": hashlib.sha1("\n".join(image_set.paths).encode()).hexdigest(),
  }
  shards = [
    image_set.fingerprint(start, min(start + shard_size, len(image_set)))
    for start in range(0, len(image_set), shard_size)
  ]
  manifest_path = parts_dir / "manifest.json"
  if parts_dir.is_dir():
    try:
      saved = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
      saved = None
    if isinstance(saved, dict) and saved.get("inputs") == manifest:
      changed = [
        number
        for number, (old, new) in enumerate(zip(saved.get("shards", []), shards))
        if old != new and (parts_dir / f"shard_{number:06d}.npy").is_file()
      ]
      for number in changed:
        (parts_dir / f"shard_{number:06d}.npy").unlink()
      if changed:
        logging.warning(
          "%s: images of %d shard(s) changed since they were encoded; encoding them again",
          parts_dir,
          len(changed),
        )
      done = len(list(parts_dir.glob("shard_*.npy")))
      if done:
        logging.info("%s: resuming, %d shard(s) already encoded", parts_dir, done)
    else:
      logging.warning("%s holds shards of other inputs; starting over", parts_dir)
      shutil.rmtree(parts_dir)
  parts_dir.mkdir(parents=True, exist_ok=True)
  files.write_text(manifest_path, json.dumps({"inputs": manifest, "shards": shards}, indent=2))
  return parts_dir


def _counted(batches, bar):
  """`batches`, each one's real rows counted on `bar` once it has been used."""
  for batch in batches:
    yield batch
    bar.update(int(batch["mask"].sum()))


def _save_atomically(path, array):
  with files.replaced(path) as tmp:
    np.save(tmp, array)


# ---------------------------------------------------------------- search


def search_codes(
  database,
  query_codes,
  *,
  index="flat",
  k=10,
  radius=None,
  index_file=None,
  save_index_to=None,
  nprobe=None,
  nflip=None,
  ef_search=None,
):
  """Neighbours of each query among `database` (an ItemCodes).

  Args:
    index: 'flat' or a faiss.index_binary_factory string; ignored with
      index_file, which loads a saved index of `database` instead.
    k: neighbours per query (clipped to the database size); with `radius`, at
      most k of those within the radius (None: all of them).
    radius: Hamming radius (inclusive) for radius search, or None for k-NN.
    save_index_to: write the index there.

  Returns:
    a list over queries of (database positions, Hamming distances), ordered
    by distance then position.
  """
  query_codes = np.asarray(query_codes)
  if radius is not None and not 0 <= radius <= database.bits:
    raise indexes.SearchError(
      f"radius={radius}: give a Hamming distance from 0 to the code length, {database.bits} "
      "(which takes every item)."
    )
  if query_codes.shape[1] != database.bits:
    raise indexes.SearchError(
      f"the queries have {query_codes.shape[1]}-bit codes, the database "
      f"{database.bits}-bit codes: encode both with the same --bits."
    )
  if index_file is not None:
    faiss_index = indexes.load_index(index_file, database.codes)
  else:
    faiss_index = indexes.build_index(database.codes, index)
  if save_index_to is not None:
    indexes.save_index(faiss_index, save_index_to, database.codes)
  indexes.set_search_parameters(faiss_index, nprobe=nprobe, nflip=nflip, ef_search=ef_search)
  if radius is None:
    return indexes.knn(faiss_index, query_codes, k)
  results = indexes.range_search(faiss_index, query_codes, radius)
  if k is not None:
    if k <= 0:
      raise indexes.SearchError(f"k={k}: ask for at least one neighbour.")
    results = [(ids[:k], distances[:k]) for ids, distances in results]
  return results


def _label_lists(labels, names):
  """Each row's positive labels, by name where names are known."""
  if labels is None:
    return None
  return [
    [str(names[j]) if names is not None else int(j) for j in np.flatnonzero(row)] for row in labels
  ]


def relevance(query_labels, database_labels):
  """(Q, N) bool: query and database item share a label; None when either
  side has no labels or their label vocabularies cannot be matched.

  Arguments are (labels (n, K) or None, label_names (K,) or None) pairs;
  named labels are matched by name, unnamed ones by column.
  """
  (q_labels, q_names), (d_labels, d_names) = query_labels, database_labels
  if q_labels is None or d_labels is None:
    return None
  if q_names is not None and d_names is not None:
    vocabulary = np.union1d(q_names, d_names)
    q_labels = _to_vocabulary(q_labels, q_names, vocabulary)
    d_labels = _to_vocabulary(d_labels, d_names, vocabulary)
  elif (q_names is None) != (d_names is None) or (q_labels.shape[1] != d_labels.shape[1]):
    return None
  return (np.asarray(q_labels, np.int32) @ np.asarray(d_labels, np.int32).T) > 0


def _to_vocabulary(labels, names, vocabulary):
  out = np.zeros((len(labels), len(vocabulary)), labels.dtype)
  out[:, np.searchsorted(vocabulary, names)] = labels
  return out


def result_records(query_paths, query_labels, database, results, asked=None):
  """One JSON-able dict per query:
  {"query": path, "neighbors": [{"path", "distance"}, ...]}, plus "labels" on
  both sides and "correct" (shares a label with the query) where known, and
  "asked": k on a query that got fewer than the `asked` neighbours (k-NN
  search; an approximate index found fewer).

  query_labels: (labels (Q, K) or None, label_names or None).
  """
  relevant = relevance(query_labels, (database.labels, database.label_names))
  query_label_lists = _label_lists(*query_labels)
  database_label_lists = _label_lists(database.labels, database.label_names)
  records = []
  for q, (ids, distances) in enumerate(results):
    record = {"query": str(query_paths[q])}
    if query_label_lists is not None:
      record["labels"] = query_label_lists[q]
    neighbors = []
    for i, distance in zip(ids, distances):
      neighbor = {"path": str(database.paths[i]), "distance": int(distance)}
      if database_label_lists is not None:
        neighbor["labels"] = database_label_lists[i]
      if relevant is not None:
        neighbor["correct"] = bool(relevant[q, i])
      neighbors.append(neighbor)
    record["neighbors"] = neighbors
    if asked is not None and len(neighbors) < min(asked, len(database)):
      record["asked"] = asked
    records.append(record)
  return records


def write_jsonl(records, out):
  """One JSON object per line, to a path (written atomically) or a stream."""
  lines = "".join(json.dumps(record) + "\n" for record in records)
  if hasattr(out, "write"):
    out.write(lines)
    return
  files.write_text(out, lines, "--out")


# ---------------------------------------------------------------- grid


def draw_grid(
  records, query_set, database_set, path, *, max_queries=8, max_neighbors=8, thumbnail=96
):
  """The PNG grid of `plots.retrieval_grid` for the first `max_queries`
  records, images read from the two image sets (see `image_sets.open_spec`).

  An image that cannot be read (a set that is None, a file moved or damaged
  since it was encoded) is drawn as a placeholder, with a warning."""
  missing = []
  queries, database = _by_path(query_set), _by_path(database_set)

  def picture(image_set, by_path, item_path):
    if item_path in by_path:
      try:
        return image_set.image(by_path[item_path])
      except errors.UserError:
        pass
    missing.append(item_path)
    return None

  rows = []
  for record in records[:max_queries]:
    cells = [
      (picture(database_set, database, n["path"]), f"d={n['distance']}", n.get("correct"))
      for n in record["neighbors"][:max_neighbors]
    ]
    query = picture(query_set, queries, record["query"])
    rows.append((query, _caption(record["query"]), cells))
  if missing:
    logging.warning(
      "%d image(s) of the grid could not be read (e.g. %r) and are drawn blank.",
      len(missing),
      missing[0],
    )
  return plots.retrieval_grid(rows, path, thumbnail=thumbnail)


def _by_path(image_set):
  """{path: position} of a set's items; {} for no set."""
  return {} if image_set is None else {p: i for i, p in enumerate(image_set.paths)}


def _caption(path, width=18):
  """A file name as a one-line caption: non-printable characters (a newline in
  a name) shown as '?', long names cut from the left."""
  path = "".join(c if c.isprintable() else "?" for c in path)
  return path if len(path) <= width else "..." + path[-(width - 3) :]


def open_set_of(item_codes, channels=3, what="codes file"):
  """The image set behind a codes file, to draw its images; None (with a
  warning) when the file does not say where they are or they are gone."""
  if not item_codes.source:
    logging.warning(
      "the %s does not say where its images are (write it with python -m schn_jax.encode): "
      "its images are drawn blank.",
      what,
    )
    return None
  try:
    return image_sets.open_spec(item_codes.source, channels)
  except errors.UserError as error:
    logging.warning("the images of the %s cannot be opened (%s): drawn blank.", what, error)
    return None
