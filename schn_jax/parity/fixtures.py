"""Reading and writing reference fixture folders.

Two kinds, each holding `manifest.json` (the weight recipe) and `meta.json`:
- a step fixture: one variant's `.npz` captures of one forward, loss, training
  step, DCC update and mAP of the official PyTorch implementation;
- a trajectory fixture: whole runs of the reference's training loop, in
  `float32.npz` and `float64.npz`, with every sample, batch order, loss,
  database-code update and evaluation.

Folders come in two layouts that read the same. The capture layout stores
every array at its captured precision, each folder self-contained. The packed
layout (`pack`, the fixtures kept in this repository) stores what the checks
read at the precision they need, LZMA-compressed: a trajectory's arrays common
to both dtypes once in `common.npz`, codes as int8 (they are -1/0/+1), and no
copy of the database codes at each evaluation (the check does not read them);
a step fixture's parameter changes as float16 (3e-8 from the captured value at
worst, the check's bar is 1e-6) and its input images as their generator
(`default_rng(seed + 1).standard_normal`, verified by SHA-256 when rebuilt).
`packed.json` says which of these a folder uses.
"""

import hashlib
import json
import pathlib
import re
import shutil
import zipfile

import numpy as np

from schn_jax import errors
from schn_jax.interop.layout import GROUP_PREFIX

REPOSITORY_FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures"
# Where the project's fixture sources are shared beside a checkout; read in addition
# when present, so that fixtures added there are checked before they are packed.
SHARED_FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures"

STEP_FILES = (
  "manifest.json",
  "meta.json",
  "inputs.npz",
  "forward.npz",
  "loss.npz",
  "step.npz",
  "dcc.npz",
  "map.npz",
)
TRAJECTORY_FILES = ("manifest.json", "meta.json", "float32.npz", "float64.npz")
TRAJECTORY_COMMON = (
  "database_images",
  "query_images",
  "database_labels",
  "query_labels",
  "samples",
  "epoch_orders",
)
TRAJECTORY_CODES = ("B_after", "eval_query_codes")


# meta.json keys a trajectory fixture's run is configured from.
TRAJECTORY_META = (
  "variant",
  "code_length",
  "samples",
  "batch",
  "max_epoch",
  "max_iter",
  "iterations_recorded",
  "eval_iter",
  "lr",
  "weight_decay",
  "alpha",
  "beta",
  "gamma",
  "zero_grad",
  "image_size",
  "float32_vs_float64",
)


class FixtureFormatError(errors.UserError, ValueError):
  """A fixture directory that does not follow the documented format."""


def all_fixture_dirs(kind_folder=""):
  """Every fixture folder of the repository (under `kind_folder`: "reference" or
  "trajectory"), then every one of the shared fixtures beside the checkout that is not
  a repository one packed (same meta.json and manifest.json)."""
  found = find_fixture_dirs(REPOSITORY_FIXTURES / kind_folder)
  shared = SHARED_FIXTURES / kind_folder
  if shared.is_dir():
    packed = {_identity(d) for d in found}
    found += [d for d in find_fixture_dirs(shared) if _identity(d) not in packed]
  return found


def _identity(directory):
  return tuple((directory / name).read_bytes() for name in ("meta.json", "manifest.json"))


def find_fixture_dirs(root):
  """`root` itself if it holds manifest.json, else every folder below it that does."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FixtureFormatError(f"{root}: not a directory")
  if (root / "manifest.json").is_file():
    return [root]
  found = sorted(p.parent for p in root.rglob("manifest.json"))
  if not found:
    raise FixtureFormatError(
      f"{root}: no manifest.json in it or any folder below it; point "
      "the check at a variant folder (mmasia/ or tomm/) or a folder above one"
    )
  return found


class Fixture:
  """Lazy access to one fixture folder, with format errors that name file and key.

  `kind` is "trajectory" when the folder holds float64.npz, "step" otherwise.
  """

  def __init__(self, directory):
    self.dir = pathlib.Path(directory)
    self.kind = "trajectory" if (self.dir / "float64.npz").is_file() else "step"
    files = TRAJECTORY_FILES if self.kind == "trajectory" else STEP_FILES
    absent = [f for f in files if not (self.dir / f).is_file()]
    if absent:
      raise FixtureFormatError(
        f"{self.dir}: missing {', '.join(absent)} (a {self.kind} fixture "
        f"folder holds {', '.join(files)})"
      )
    self.manifest = self._json("manifest.json", ("variant", "keys"))
    self.meta = self._json("meta.json", TRAJECTORY_META if self.kind == "trajectory" else ())
    self.variant = self.manifest["variant"]
    packed = self.dir / "packed.json"
    self.packed = self._json("packed.json", ()) if packed.is_file() else {}
    self._npz = {}

  def _json(self, name, required):
    path = self.dir / name
    try:
      data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise FixtureFormatError(f"{path}: not valid JSON ({e})") from e
    lacking = [k for k in required if k not in data]
    if not isinstance(data, dict) or lacking:
      raise FixtureFormatError(
        f"{path}: expected an object with keys {', '.join(required)}; "
        f"missing {', '.join(lacking) or 'all'}"
      )
    return data

  def _read(self, name):
    path = self.dir / f"{name}.npz"
    try:
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    except Exception as e:  # zipfile/ValueError/OSError for damaged archives
      raise FixtureFormatError(f"{path}: not a readable .npz archive ({e})") from e

  def npz(self, name):
    """The arrays of `<name>.npz` as a dict, as captured (whatever the layout);
    `fixture.get(name, key)` checks the key."""
    if name not in self._npz:
      arrays = self._read(name)
      if self.kind == "trajectory" and "common" in self.packed.get("files", ()):
        arrays.update(self._read("common"))
      for key in self.packed.get("float16", ()):
        if key in arrays:
          arrays[key] = arrays[key].astype(np.float32)
      for key in self.packed.get("int8", ()):
        if key in arrays:
          arrays[key] = arrays[key].astype(np.float32)
      if name == "inputs" and "images" in self.packed:
        arrays["images"] = self._generated_images(self.packed["images"])
      self._npz[name] = arrays
    return self._npz[name]

  def _generated_images(self, recipe):
    try:
      rng = np.random.default_rng(int(recipe["seed"]))
      images = rng.standard_normal(tuple(recipe["shape"]), dtype=np.float32)
      expected = recipe["sha256"]
    except (KeyError, TypeError, ValueError) as e:
      raise FixtureFormatError(f"{self.dir / 'packed.json'}: bad 'images' entry ({e})") from e
    if hashlib.sha256(images.tobytes()).hexdigest() != expected:
      raise FixtureFormatError(
        f"{self.dir / 'packed.json'}: the rebuilt input images do not match their SHA-256"
      )
    return images

  def get(self, name, key):
    arrays = self.npz(name)
    if key not in arrays:
      raise FixtureFormatError(f"{self.dir / (name + '.npz')}: missing array {key!r}")
    return arrays[key]

  @property
  def seed(self):
    if "seed" in self.meta:
      return int(self.meta["seed"])
    match = re.search(r"default_rng\((\d+)\)", str(self.manifest.get("rng", "")))
    if not match:
      raise FixtureFormatError(f"{self.dir}: no seed in meta.json or manifest.json 'rng'")
    return int(match.group(1))

  def recipe_weights(self):
    """Rebuild every weight from the recipe: {(group, key): float32 array in torch layout}.

    Checks each tensor against the manifest's checksums, so a wrong rebuild is
    caught here rather than showing up as a forward mismatch.
    """
    rng = np.random.default_rng(self.seed)
    weights = {}
    for entry in sorted(self.manifest["keys"], key=lambda e: e["index"]):
      try:
        shape, std, where = tuple(entry["shape"]), entry["std"], (entry["group"], entry["key"])
      except KeyError as e:
        raise FixtureFormatError(
          f"{self.dir / 'manifest.json'}: key entry {entry.get('index')} lacks field {e}"
        ) from e
      w = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(std)
      ok = np.allclose(
        w.astype(np.float64).sum(), entry["check_sum_f64"], rtol=1e-9, atol=1e-9
      ) and np.array_equal(w.reshape(-1)[:4], np.float32(entry["check_first4"][:4]))
      if not ok:
        raise FixtureFormatError(
          f"{self.dir / 'manifest.json'}: rebuilt {where[0]}/{where[1]} "
          "does not match its checksums"
        )
      weights[where] = w
    return weights

  def state_dicts(self):
    """(SCHN state dict keyed as the reference CycleHashNet, discriminator state dict or None)."""
    weights = self.recipe_weights()
    unknown = sorted({g for g, _ in weights} - set(GROUP_PREFIX))
    if unknown:
      raise FixtureFormatError(f"{self.dir / 'manifest.json'}: unknown groups {unknown}")
    schn = {GROUP_PREFIX[g] + k: w for (g, k), w in weights.items() if g != "disc"}
    disc = {k: w for (g, k), w in weights.items() if g == "disc"} or None
    return schn, disc

  def dims(self):
    """(batch, bits, classes, image size) read from the inputs."""
    images, codes, labels = (self.get("inputs", k) for k in ("images", "B_codes", "labels"))
    if images.ndim != 4 or images.shape[1] != 3:
      raise FixtureFormatError(
        f"{self.dir / 'inputs.npz'}: images must be (B,3,H,W), got {images.shape}"
      )
    return images.shape[0], codes.shape[1], labels.shape[1], images.shape[2]


# ---------------------------------------------------------------- writing


def write_npz(path, arrays):
  """An .npz that numpy.load reads, LZMA-compressed (a zip entry method numpy's reader
  accepts; about 15% smaller than savez_compressed on these arrays)."""
  path = pathlib.Path(path)
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
    for key, value in arrays.items():
      with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def pack(source, target):
  """Writes the fixture folder `source` to `target` in the packed layout (module doc)."""
  fixture = Fixture(source)
  target = pathlib.Path(target)
  target.mkdir(parents=True, exist_ok=True)
  for name in ("manifest.json", "meta.json", "README.md"):
    if (fixture.dir / name).is_file():
      shutil.copyfile(fixture.dir / name, target / name)
  packed = {"files": [], "float16": [], "int8": []}
  if fixture.kind == "trajectory":
    runs = {dtype: fixture.npz(dtype) for dtype in ("float32", "float64")}
    common = {k: runs["float32"][k] for k in TRAJECTORY_COMMON}
    for k, v in common.items():
      if not np.array_equal(v, runs["float64"][k]):
        raise FixtureFormatError(f"{fixture.dir}: {k} differs between float32.npz and float64.npz")
    write_npz(target / "common.npz", common)
    packed["files"].append("common")
    for dtype, arrays in runs.items():
      kept = {}
      for k, v in arrays.items():
        if k in TRAJECTORY_COMMON or k == "eval_database_codes":
          continue
        if k in TRAJECTORY_CODES:
          if not np.array_equal(v.astype(np.int8), v):
            raise FixtureFormatError(f"{fixture.dir / (dtype + '.npz')}: {k} is not -1/0/+1")
          v = v.astype(np.int8)
          packed["int8"] = sorted(set(packed["int8"]) | {k})
        kept[k] = v
      write_npz(target / f"{dtype}.npz", kept)
  else:
    for name in (f[:-4] for f in STEP_FILES if f.endswith(".npz")):
      arrays = dict(fixture.npz(name))
      if name == "step":
        for k in [k for k in arrays if k.startswith("delta__")]:
          arrays[k] = arrays[k].astype(np.float16)
          packed["float16"].append(k)
      if name == "inputs":
        shape = arrays["images"].shape
        seed = fixture.seed + 1
        rebuilt = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        if np.array_equal(rebuilt, arrays["images"]):
          packed["images"] = {
            "generator": "numpy default_rng(seed).standard_normal(shape, float32)",
            "seed": seed,
            "shape": list(shape),
            "sha256": hashlib.sha256(rebuilt.tobytes()).hexdigest(),
          }
          del arrays["images"]
      write_npz(target / f"{name}.npz", arrays)
  (target / "packed.json").write_text(json.dumps(packed, indent=1) + "\n")


def write_trajectory(directory, manifest, meta, runs, readme=None):
  """Writes a trajectory fixture folder in the capture layout: `runs` {"float32": arrays,
  "float64": arrays}, each a self-contained `<dtype>.npz` (LZMA), manifest.json,
  meta.json and, when given, README.md; returns it read back as a Fixture, so that a
  folder the checks cannot read is never left looking finished."""
  directory = pathlib.Path(directory)
  lacking = [k for k in TRAJECTORY_META if k not in meta]
  if lacking or set(runs) != {"float32", "float64"}:
    raise ValueError(f"incomplete trajectory: meta lacks {lacking}, runs {sorted(runs)}")
  directory.mkdir(parents=True, exist_ok=True)
  for dtype, arrays in runs.items():
    write_npz(directory / f"{dtype}.npz", arrays)
  if readme is not None:
    (directory / "README.md").write_text(readme)
  (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
  # Last: manifest.json is what marks a folder as a fixture (find_fixture_dirs).
  (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
  return Fixture(directory)
