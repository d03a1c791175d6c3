"""Reading a reference fixture directory.

Two kinds, each holding `manifest.json` (the weight recipe) and `meta.json`:
- a step fixture: one variant's `.npz` captures of one forward, loss, training
  step, DCC update and mAP of the official PyTorch implementation;
- a trajectory fixture: whole runs of the reference's training loop, in
  `float32.npz` and `float64.npz`, with every sample, batch order, loss,
  database-code update and evaluation.
"""

import json
import pathlib
import re

import numpy as np

from schn_jax import errors
from schn_jax.interop.layout import GROUP_PREFIX

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

  def npz(self, name):
    """The arrays of `<name>.npz` as a dict; `fixture.get(name, key)` checks the key."""
    if name not in self._npz:
      path = self.dir / f"{name}.npz"
      try:
        with np.load(path, allow_pickle=False) as data:
          self._npz[name] = {k: data[k] for k in data.files}
      except Exception as e:  # zipfile/ValueError/OSError for damaged archives
        raise FixtureFormatError(f"{path}: not a readable .npz archive ({e})") from e
    return self._npz[name]

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
