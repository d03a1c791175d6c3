"""Records a trajectory fixture from the reference's own training loop, for a config of ours.

    python -m schn_jax.parity.capture --reference=PATH --config=configs/tiny.py \\
      --iterations=2 --out=DIR [--config.key=value ...]
    python -m schn_jax.parity.check DIR

PATH is a checkout of the official PyTorch implementation (JalinWang/SCHN at the
commit the repository's trajectory fixtures name; its files are checked against their
SHA-256). The command imports that checkout's `main_mmasia.py` or `main_tomm.py`
(config.variant) and runs its own `train()` - CycleHashNet, CycleLoss, the Adam
optimizers, the tomm D and G steps and their learning-rate decay, the soft
similarity, DCC, the evaluation schedule and its mAP - for --iterations outer
iterations of config.code_lengths' one code length, once in float32 and once in
float64, with the config's hyper-parameters (learning_rate, alpha, beta, gamma,
sample_size, batch_size, max_epoch, max_iter, eval_iter, optimizer_semantics). It
writes a trajectory fixture (fixtures/trajectory/README.md) in the capture layout:
both runs, the recipe's manifest.json, meta.json and a README.md. torch runs with
--torch_threads intra-op threads, 1 by default (`capture` says why).

What is swapped around the reference's code, by replacing globals of the reference
modules this command imports afresh for each run (`SWAPS`, listed again in the
fixture's meta.json `swapped` and its README):
- data: train()'s `query_dataloader` and `retrieval_dataloader` arguments and
  main_*'s `sample_dataloader` serve our dataset (`schn_jax.data.build_dataset
  (config.data)`, split by config.seed): the database and query images as our
  pipeline serves them without augmentation, normalized by `schn_jax.data.normalize`
  (the tensors our loop trains on), channels first;
- sampling: every outer iteration's sample and every epoch's batch order come from
  `training.loop.plan_iteration` (config.sampling, config.seed) instead of
  torch.randperm and a shuffling DataLoader, and are recorded;
- initial codes, only when config.database_init is "label_codes": train()'s B_all
  (its first torch.zeros) starts from `training.loop.initial_database_codes`;
- weights: the deterministic recipe (manifest.json) is loaded into CycleHashNet and,
  for tomm, the discriminator as soon as train() builds them; `alexnet_feature_output`
  builds the reference's AlexNet_feature_output without downloading ImageNet weights;
- backbone (config.backbone="small_cnn" only): `alexnet_feature_output` returns a torch
  module computing `models.visual.SmallCNN` and its tanh hash head (state-dict keys
  features.0/.3, classifier.1/.4, hash_layer.0; config.data.num_channels input
  channels), and `hidden_size_image`, the visual feature width the cycle network is
  built for, becomes SmallCNN's 512;
- dropout: every nn.Dropout's p and the GCN's dropout rate are 0; augmentation: none;
- optimizer_semantics="torch18" only: main_*'s `optim.Adam` is a subclass whose
  zero_grad() fills zeros, as torch 1.8.1's does (torch2: the installed torch's Adam);
- float64 run only: torch.set_default_dtype(torch.float64), the networks .double(),
  Tensor.float() converts to the default dtype and main_*'s `torch.float` is the default
  dtype (the reference casts its similarity matrices with .float() and makes the BCE
  targets with dtype=torch.float);
- logging: `logger` (loguru; a stand-in while importing when loguru is not installed)
  and `tqdm` are a recorder and a pass-through; train()'s result files go to a
  temporary folder; the run stops at the start of outer iteration --iterations.
Recorded, changing nothing: every CycleLoss and (tomm) BCELoss value, B_all after
every DCC update (read from train()'s frame when it logs the iteration), and the
arguments and result of every `evaluate.mean_average_precision` call.

Configs the reference cannot run as ours would are refused with one line naming the
key (`capturable`): another weight_decay (the reference's Adams hard-code 1e-5) or
D/G learning-rate rule, a cycle learning-rate milestone inside the recorded
iterations, another backbone, top-k or
database-code mode.
"""

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib
import itertools
import json
import math
import pathlib
import sys
import tempfile
import time
import types

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from schn_jax import data as data_lib
from schn_jax import errors, files
from schn_jax.models import visual
from schn_jax.parity import fixtures
from schn_jax.parity.build import input_normalization, precision
from schn_jax.parity.trajectory import TRAJECTORY_LOSSES
from schn_jax.training import loop
from schn_jax.training.train import check_config

# The reference's top-level modules, imported afresh for each run.
REFERENCE_MODULES = ("main_mmasia", "main_tomm", "modules", "utils", "data")
DTYPES = ("float32", "float64")
# The reference's Adams are built with weight_decay=1e-5; tomm's D/G learning rates are
# divided by 5 after 0-based iterations (5, 40) when max_iter is 50, after 130 otherwise.
REFERENCE_WEIGHT_DECAY = 1e-5
REFERENCE_ADVERSARIAL_DECAY = {"factor": 5.0, "milestones_if_max_iter_50": (5, 40)}
REFERENCE_ADVERSARIAL_MILESTONES = (130,)
BCE_ORDER = ("lossD_real", "lossD_fake", "lossG")  # the three BCELoss calls of a tomm step

SWAPS = {
  "data": "query_dataloader, retrieval_dataloader (train()'s arguments) and main_*."
  "sample_dataloader serve our dataset (schn_jax.data.build_dataset(config.data), split "
  "by config.seed): images as our pipeline serves them without augmentation, "
  "normalized by schn_jax.data.normalize, channels first",
  "sampling": "every iteration's sample and every epoch's batch order from "
  "schn_jax.training.loop.plan_iteration (config.sampling, config.seed), recorded in "
  "`samples` and `epoch_orders`, instead of torch.randperm and a shuffling DataLoader",
  "database_init": "config.database_init='label_codes' only: train()'s B_all (its first "
  "torch.zeros) starts from schn_jax.training.loop.initial_database_codes",
  "weights": "the recipe (manifest.json) loaded as soon as train() builds CycleHashNet "
  "(and, for tomm, the discriminator); alexnet_feature_output builds the reference's "
  "AlexNet_feature_output without downloading ImageNet weights",
  "backbone": "alexnet_feature_output returns a torch module computing "
  "schn_jax.models.visual.SmallCNN and its tanh hash head (keys features.0/.3, "
  "classifier.1/.4, hash_layer.0), and hidden_size_image is set to its 512 features",
  "dropout": "every nn.Dropout's p and the GCN's dropout rate set to 0",
  "augmentation": "none",
  "zero_grad": "main_*.optim.Adam is a subclass whose zero_grad() fills zeros (torch 1.8.1)",
  "float64": "in the float64 run only: torch.set_default_dtype(torch.float64), networks .double(), "
  "Tensor.float() converts to the default dtype and main_*.torch.float is the default "
  "dtype (for the .float() similarity casts and dtype=torch.float BCE targets)",
  "logging": "logger (loguru) and tqdm replaced by a recorder and a pass-through; "
  "train()'s result files go to a temporary folder; the run stops at the start of "
  "outer iteration `iterations_recorded`",
}
RECORDED = (
  "every CycleLoss and (tomm) BCELoss value, B_all after every DCC update (read from "
  "train()'s frame when it logs the iteration), and the arguments and result of every "
  "evaluate.mean_average_precision call; none of them changed"
)


class NotAReferenceError(errors.UserError, ValueError):
  """--reference is not a checkout of the reference at the fixtures' commit."""


class _Stop(Exception):
  """Raised inside the reference's loop once the recorded iterations are done."""


# ---------------------------------------------------------------- checks


def _sha256(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def expected_reference():
  """(commit, {file: SHA-256}) of the reference the repository's trajectory fixtures
  were captured from (their meta.json)."""
  for directory in fixtures.all_fixture_dirs("trajectory"):
    meta = json.loads((directory / "meta.json").read_text())
    if "reference_sha256" in meta:
      return meta["reference_commit"], meta["reference_sha256"]
  raise fixtures.FixtureFormatError(
    f"{fixtures.REPOSITORY_FIXTURES / 'trajectory'}: no fixture records reference_sha256"
  )


def check_reference(path):
  """The checkout's root, refused in one line (naming the file) unless every file the
  fixtures were captured from is there with its recorded SHA-256."""
  commit, digests = expected_reference()
  root = pathlib.Path(path).expanduser()
  hint = f"give a checkout of JalinWang/SCHN at commit {commit[:7]}"
  if not root.is_dir():
    raise NotAReferenceError(f"--reference={path}: not a directory; {hint}")
  for name, digest in digests.items():
    file = root / name
    if not file.is_file():
      raise NotAReferenceError(
        f"--reference={path}: no {name} there, so not a reference checkout; {hint}"
      )
    actual = _sha256(file)
    if actual != digest:
      raise NotAReferenceError(
        f"--reference={path}: {name} differs from commit {commit[:7]}'s (SHA-256 "
        f"{actual[:12]}..., expected {digest[:12]}...); {hint}"
      )
  return root.resolve()


def capturable(config, iterations):
  """Refuses, naming the key, what the reference's train() cannot run as our loop would
  within the recorded iterations."""
  problems = []
  if config.variant not in TRAJECTORY_LOSSES:
    problems.append(f"config.variant={config.variant!r}: one of {tuple(TRAJECTORY_LOSSES)}")
  if len(tuple(config.code_lengths)) != 1:
    problems.append(
      f"config.code_lengths={tuple(config.code_lengths)}: a fixture records one code "
      "length, e.g. --config.code_lengths='(24,)'"
    )
  if config.backbone not in ("alexnet", "small_cnn"):
    problems.append(
      f"config.backbone={config.backbone!r}: the capture runs 'alexnet' (the reference's) "
      "or 'small_cnn' (swapped in)"
    )
  elif config.backbone == "alexnet" and config.data.num_channels != 3:
    problems.append(
      f"config.data.num_channels={config.data.num_channels}: the reference's AlexNet "
      "takes 3 channels"
    )
  if config.weight_decay != REFERENCE_WEIGHT_DECAY:
    problems.append(
      f"config.weight_decay={config.weight_decay}: the reference's Adams use "
      f"{REFERENCE_WEIGHT_DECAY}"
    )
  decay = config.adversarial_lr_decay
  if config.variant == "tomm" and (
    decay.factor != REFERENCE_ADVERSARIAL_DECAY["factor"]
    or tuple(decay.milestones_if_max_iter_50)
    != REFERENCE_ADVERSARIAL_DECAY["milestones_if_max_iter_50"]
    or tuple(decay.milestones) != REFERENCE_ADVERSARIAL_MILESTONES
  ):
    problems.append(
      "config.adversarial_lr_decay: the reference divides the D/G rates by 5 after "
      "iterations (5, 40) when max_iter is 50, after 130 otherwise"
    )
  early = [m for m in config.cycle_lr_decay.milestones if m + 1 < iterations]
  if early:
    problems.append(
      f"config.cycle_lr_decay.milestones={tuple(config.cycle_lr_decay.milestones)}: the "
      f"reference never decays the cycle rate, and {early} falls inside the "
      f"{iterations} recorded iterations; add --config.cycle_lr_decay.milestones='()'"
    )
  if config.eval.database_codes != "learned":
    problems.append(
      f"config.eval.database_codes={config.eval.database_codes!r}: the reference "
      "evaluates its learned database codes ('learned')"
    )
  if config.eval.topk != -1:
    problems.append(f"config.eval.topk={config.eval.topk}: trajectory fixtures record mAP@all (-1)")
  if not 0 < iterations <= config.max_iter:
    problems.append(f"--iterations={iterations} must be in [1, config.max_iter={config.max_iter}]")
  if problems:
    raise errors.ConfigError("the reference cannot run this config: " + "; ".join(problems))


def capture_config(config):
  """A copy of `config` as both sides run it: dropout and augmentation off."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.dropout_rate = 0.0
    config.data.augment = False
    config.dtype = "float32"
  return config


def import_torch():
  try:
    import torch
  except ImportError:
    raise errors.MissingDependencyError(
      "torch is not installed, and the capture runs the reference's PyTorch code: "
      "pip install -r requirements-dev.txt"
    ) from None
  return torch


# ---------------------------------------------------------------- our data


@dataclasses.dataclass
class CaptureData:
  """What both sides train and evaluate on: uint8 images as served, labels, the plans."""

  database_images: np.ndarray  # (N, H, W, C) uint8
  query_images: np.ndarray  # (Q, H, W, C) uint8
  database_labels: np.ndarray  # (N, K) float32
  query_labels: np.ndarray  # (Q, K) float32
  samples: np.ndarray  # (T, ns) int64: sorted database positions
  epoch_orders: np.ndarray  # (T, E, ns) int64: positions in the sample

  def common_arrays(self):
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _served(data, indices):
  """uint8 images of `indices` as our pipeline serves them without augmentation."""
  batches = data.batches(indices, 256, train=False)
  return np.concatenate([b["image"][b["mask"]] for b in batches])


def load_capture_data(config, iterations):
  """Our dataset's split (config.data, config.seed) and the recorded iterations' plans
  (`loop.plan_iteration`). Checks `config` as train.py does."""
  with tempfile.TemporaryDirectory() as workdir:
    data = data_lib.build_dataset(config.data, workdir, config.seed, split_mode="defer")
  try:
    pool = loop.training_positions(data.split)
    check_config(config, len(data.split.database), len(pool))
    bits = config.code_lengths[0]
    plans = [loop.plan_iteration(config, pool, bits, t) for t in range(iterations)]
    return CaptureData(
      database_images=_served(data, data.split.database),
      query_images=_served(data, data.split.query),
      database_labels=data.labels[data.split.database].astype(np.float32),
      query_labels=data.labels[data.split.query].astype(np.float32),
      samples=np.stack([s for s, _ in plans]).astype(np.int64),
      epoch_orders=np.stack([np.asarray(o) for _, o in plans]).astype(np.int64),
    )
  finally:
    data.loader.close()


def network_inputs(images, num_channels, dtype):
  """uint8 NHWC -> the `dtype` NCHW tensor values our loop feeds the network."""
  with precision(dtype):
    normalized = np.asarray(data_lib.normalize(images, num_channels, np.dtype(dtype)))
  return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- the reference, imported


@contextlib.contextmanager
def _reference_imports(root):
  """Lets `import main_tomm` etc. find the checkout, then takes its modules out of
  sys.modules again (each run imports them afresh, so no patch outlives its run) and
  writes no bytecode into the checkout. loguru, which the reference logs with, gets a
  stand-in while importing when it is not installed: the runs replace its logger."""
  saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in REFERENCE_MODULES}
  for name in saved:
    del sys.modules[name]
  stub = None
  if importlib.util.find_spec("loguru") is None:
    stub = types.ModuleType("loguru")
    stub.logger = types.SimpleNamespace()
    sys.modules["loguru"] = stub
  sys.path.insert(0, str(root))
  dont_write = sys.dont_write_bytecode
  sys.dont_write_bytecode = True
  try:
    yield
  finally:
    sys.dont_write_bytecode = dont_write
    sys.path.remove(str(root))
    if stub is not None:
      del sys.modules["loguru"]
    for name in [k for k in sys.modules if k.split(".")[0] in REFERENCE_MODULES]:
      del sys.modules[name]
    sys.modules.update(saved)


def import_reference(root, variant):
  """(main_<variant> module, the `modules` package, modules.all_in_one), fresh."""
  with _reference_imports(root):
    main = importlib.import_module(f"main_{variant}")
    return main, sys.modules["modules"], sys.modules["modules.all_in_one"]


class _Namespace:
  """A module with some attributes replaced (the rest read through)."""

  def __init__(self, module, **replaced):
    self._module = module
    self.__dict__.update(replaced)

  def __getattr__(self, name):
    return getattr(self._module, name)


# ---------------------------------------------------------------- torch pieces


def small_cnn_module(torch, channels, image_size, bits):
  """A torch module computing `models.visual.SmallCNN` (3x3 convs to 32 and 64 channels,
  each with ReLU and 2x2 max pooling; fc to 512, ReLU, fc to 512, ReLU; dropout before
  each fc) with its tanh hash head: `forward(x) -> (features, codes)` and the state-dict
  keys of the reference's AlexNet_feature_output (`interop.layout`)."""
  nn = torch.nn
  side = image_size // 2 // 2
  width = visual.SmallCNN.feature_dim

  class SmallCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
      )
      self.classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(64 * side * side, width),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(width, width),
        nn.ReLU(),
      )
      self.hash_layer = nn.Sequential(nn.Linear(width, bits), nn.Tanh())

    def forward(self, x):
      features = self.classifier(torch.flatten(self.features(x), 1))
      return features, self.hash_layer(features)

  return SmallCNN()


class Recipe:
  """The fixtures' deterministic weights (fixtures/reference/README.md): one
  default_rng(seed) stream over the groups' state dicts in torch's order."""

  GROUPS = ("image", "label", "cycle", "disc")

  def __init__(self, seed):
    self.seed = seed
    self.rng = np.random.default_rng(seed)
    self.entries = []

  def load(self, torch, group, module):
    state = {}
    for key, tensor in module.state_dict().items():
      shape = tuple(tensor.shape)
      if len(shape) >= 2:
        graph = key.endswith(("gc.weight", "gc1.weight"))
        fan_in = shape[0] if graph else math.prod(shape[1:])
        rule = "gcn_in_out:fan_in=shape[0]" if graph else "torch_out_in:fan_in=prod(shape[1:])"
        std = 1.0 / math.sqrt(fan_in)
      else:
        fan_in, rule, std = None, "1d:std=0.01", 0.01
      w = self.rng.standard_normal(size=shape, dtype=np.float32) * np.float32(std)
      w64 = w.astype(np.float64)
      self.entries.append(
        {
          "index": len(self.entries),
          "group": group,
          "key": key,
          "shape": list(shape),
          "numel": int(w.size),
          "std": std,
          "std_float32": float(np.float32(std)),
          "fan_in": fan_in,
          "rule": rule,
          "check_sum_f64": float(w64.sum()),
          "check_sumsq_f64": float((w64 * w64).sum()),
          "check_first4": [float(v) for v in w.reshape(-1)[:4]],
        }
      )
      state[key] = torch.from_numpy(w)
    module.load_state_dict(state, strict=True)

  def manifest(self, variant):
    groups = self.GROUPS if variant == "tomm" else self.GROUPS[:3]
    return {
      "variant": variant,
      "rng": f"numpy.random.default_rng({self.seed})",
      "module_order": list(groups),
      "keys": self.entries,
    }


@contextlib.contextmanager
def _default_dtype(torch, dtype):
  """float64: double by default, and Tensor.float() to the default dtype."""
  if dtype == "float32":
    yield
    return
  before = torch.get_default_dtype()
  own = "float" in torch.Tensor.__dict__
  previous = torch.Tensor.__dict__.get("float")
  torch.set_default_dtype(torch.float64)
  torch.Tensor.float = lambda self, memory_format=torch.preserve_format: self.to(
    torch.get_default_dtype(), memory_format=memory_format
  )
  try:
    yield
  finally:
    torch.set_default_dtype(before)
    if own:
      torch.Tensor.float = previous
    else:
      del torch.Tensor.float


# ---------------------------------------------------------------- one run of train()


class _Recorder:
  """Stands in for the reference's logger, and keeps what its run computes."""

  def __init__(self, iterations):
    self.iterations = iterations
    self.iteration = -1  # the outer iteration in progress
    self.losses = {}  # name -> [(iteration, value)]
    self.codes = []  # B_all after each DCC update
    self.evaluations = []
    self.excluded_seconds = 0.0  # evaluation and recording, not training
    self.iteration_seconds = []  # sample to DCC update, recording excluded
    self._iteration_start = (0.0, 0.0)

  def start_iteration(self):
    self.iteration += 1
    if self.iteration == self.iterations:
      raise _Stop
    self._iteration_start = (time.perf_counter(), self.excluded_seconds)
    return self.iteration

  def loss(self, name, value):
    self.losses.setdefault(name, []).append((self.iteration, float(value.item())))

  def debug(self, message, *args, **kwargs):
    # train() logs each iteration right after its DCC update: keep B_all.
    started = time.perf_counter()
    began, excluded = self._iteration_start
    self.iteration_seconds.append(started - began - (self.excluded_seconds - excluded))
    caller = sys._getframe(1).f_locals
    if caller.get("it") != self.iteration or len(self.codes) != self.iteration:
      raise RuntimeError(f"unexpected log call in the reference's loop: {message}")
    self.codes.append(caller["B_all"].detach().cpu().numpy().astype(np.float32))
    self.excluded_seconds += time.perf_counter() - started

  def info(self, *args, **kwargs):
    pass

  def timed(self, function):
    """`function`, its time counted as not training."""

    def call(*args, **kwargs):
      started = time.perf_counter()
      try:
        return function(*args, **kwargs)
      finally:
        self.excluded_seconds += time.perf_counter() - started

    return call

  def mean_average_precision(self, original):
    def call(query_code, database_code, *args, **kwargs):
      result = original(query_code, database_code, *args, **kwargs)
      self.evaluations.append(
        {
          "iteration": self.iteration + 1,
          "query_codes": query_code.detach().cpu().numpy().astype(np.float32),
          "database_codes": database_code.detach().cpu().numpy().astype(np.float32),
          "map": float(result),
        }
      )
      return result

    return self.timed(call)


class _Dataset:
  """What train() asks of a loader's dataset."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.labels)

  def get_onehot_targets(self):
    return self.labels


class _Loader:
  """(images, labels, positions) batches of `dataset`; each pass over it takes the next
  of `orders` (positions in the dataset)."""

  def __init__(self, torch, dataset, batch_size, orders):
    self.dataset, self.batch_size, self._orders = dataset, batch_size, iter(orders)
    self._torch = torch

  def __iter__(self):
    order = next(self._orders)
    for start in range(0, len(order), self.batch_size):
      positions = self._torch.as_tensor(order[start : start + self.batch_size])
      yield self.dataset.images[positions], self.dataset.labels[positions], positions


def run_reference(root, config, data, dtype, weights="recipe", seed=None):
  """Runs the reference's train() in `dtype` with the swaps of the module doc over the
  recorded iterations of `data`. weights: "recipe" (the fixtures' weights, `seed`) or
  "torch" (the networks' own torch initialization after torch.manual_seed(seed)).

  Returns {"arrays": the run's fixture arrays, "recipe": Recipe or None,
  "train_seconds": training time (evaluation and recording excluded),
  "iteration_seconds": the same per outer iteration, "images": the number of images
  trained on}.
  """
  torch = import_torch()
  main, package, networks = import_reference(root, config.variant)
  iterations, bits = len(data.samples), config.code_lengths[0]
  channels, size = config.data.num_channels, config.data.image_size
  recorder = _Recorder(iterations)
  recipe = Recipe(seed) if weights == "recipe" else None
  to_tensor = lambda x: torch.tensor(np.asarray(x), dtype=torch.get_default_dtype())

  with _default_dtype(torch, dtype):
    database = _Dataset(
      to_tensor(network_inputs(data.database_images, channels, dtype)),
      to_tensor(data.database_labels),
    )
    queries = _Dataset(
      to_tensor(network_inputs(data.query_images, channels, dtype)),
      to_tensor(data.query_labels),
    )

    def sample_dataloader(dataloader, num_samples, batch_size, root, dataset):
      t = recorder.start_iteration()
      sample, orders = data.samples[t], data.epoch_orders[t]
      assert num_samples == len(sample) and batch_size == config.batch_size
      picked = torch.as_tensor(sample)
      loader = _Loader(
        torch, _Dataset(database.images[picked], database.labels[picked]), batch_size, orders
      )
      return loader, picked

    def prepared(group, module):
      """`module` with the recipe's weights (in group order), no dropout, in `dtype`."""
      if recipe is not None:
        recipe.load(torch, group, module)
      for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
          m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
          m.dropout = 0.0
      return module.double() if dtype == "float64" else module

    build_net = (
      package.cycle_hash_net_3att if config.variant == "mmasia" else main.cycle_hash_net_3att
    )

    def cycle_hash_net(*args):
      model = build_net(*args)
      for group in ("image", "label", "cycle"):
        prepared(group, getattr(model, f"model_{group}"))
      return model

    def backbone(code_length):
      if config.backbone == "small_cnn":
        return small_cnn_module(torch, channels, size, code_length)
      return owner.AlexNet_feature_output(code_length)

    # mmasia's train() calls modules.cycle_hash_net_3att, whose networks live in
    # modules/all_in_one.py; tomm's has its own copies in main_tomm.py.
    owner = networks if config.variant == "mmasia" else main
    owner.alexnet_feature_output = backbone
    if config.backbone == "small_cnn":
      owner.hidden_size_image = visual.SmallCNN.feature_dim
    if config.variant == "mmasia":
      package.cycle_hash_net_3att = cycle_hash_net
    else:
      main.cycle_hash_net_3att = cycle_hash_net
      build_discriminator = main.ReconstructionDiscriminatorNetwork
      main.ReconstructionDiscriminatorNetwork = lambda *a: prepared("disc", build_discriminator(*a))

      class RecordingBCELoss(torch.nn.BCELoss):
        calls = 0

        def forward(self, probabilities, target):
          loss = super().forward(probabilities, target)
          recorder.loss(BCE_ORDER[RecordingBCELoss.calls % 3], loss)
          RecordingBCELoss.calls += 1
          return loss

      main.nn = _Namespace(torch.nn, BCELoss=RecordingBCELoss)

    cycle_loss = main.CycleLoss

    def recording_cycle_loss(code_length, gamma):
      forward = cycle_loss(code_length, gamma)

      def call(*args):
        loss = forward(*args)
        recorder.loss("loss_cycle", loss)
        return loss

      return call

    main.CycleLoss = recording_cycle_loss
    main.sample_dataloader = sample_dataloader
    main.logger = recorder
    main.tqdm = lambda iterable, *args, **kwargs: iterable
    main.generate_code = recorder.timed(main.generate_code)
    main.evaluate = _Namespace(
      main.evaluate,
      mean_average_precision=recorder.mean_average_precision(main.evaluate.mean_average_precision),
    )
    if config.optimizer_semantics == "torch18":

      class ZeroFillingAdam(torch.optim.Adam):
        def zero_grad(self, set_to_none=False):
          super().zero_grad(set_to_none=set_to_none)

      main.optim = _Namespace(torch.optim, Adam=ZeroFillingAdam)
    torch_swaps = {"float": torch.float64} if dtype == "float64" else {}
    if config.database_init != "zeros":
      # train()'s first torch.zeros is B_all, the database codes before iteration 0.
      initial = loop.initial_database_codes(config, data.database_labels, bits, np.float64)
      calls = itertools.count()

      def zeros(*shape, **kwargs):
        codes = torch.zeros(*shape, **kwargs)
        if next(calls) == 0:
          codes[:] = torch.as_tensor(initial, dtype=codes.dtype)
        return codes

      torch_swaps["zeros"] = zeros
    if torch_swaps:
      main.torch = _Namespace(torch, **torch_swaps)

    args = types.SimpleNamespace(
      device="cpu",
      num_samples=config.sample_size,
      batch_size=config.batch_size,
      max_epoch=config.max_epoch,
      max_iter=config.max_iter,
      eval_iter=config.eval_iter,
      topk=-1,
      lr=config.learning_rate,
      alpha=config.alpha,
      beta=config.beta,
      gamma=config.gamma,
      class_num=data.database_labels.shape[1],
      root=None,
      dataset=config.data.name,
    )
    query_loader = _Loader(
      torch, queries, config.eval.batch_size, itertools.repeat(np.arange(len(queries)))
    )
    if weights == "torch":
      torch.manual_seed(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir:
      try:
        main.train(query_loader, types.SimpleNamespace(dataset=database), bits, logdir, args)
      except _Stop:
        pass
    seconds = time.perf_counter() - started - recorder.excluded_seconds

  arrays = _run_arrays(recorder, config, data)
  return {
    "arrays": arrays,
    "recipe": recipe,
    "train_seconds": seconds,
    "iteration_seconds": recorder.iteration_seconds,
    "images": int(data.epoch_orders.size),
  }


def _run_arrays(recorder, config, data):
  """The recorded run as the fixture's arrays (fixtures/trajectory/README.md)."""
  iterations, epochs, size = data.epoch_orders.shape
  steps = -(-size // config.batch_size)
  if len(recorder.codes) != iterations:
    raise RuntimeError(f"recorded {len(recorder.codes)} iterations, planned {iterations}")
  arrays = {"B_after": np.stack(recorder.codes)}
  for name in TRAJECTORY_LOSSES[config.variant]:
    values = recorder.losses.get(name, [])
    arrays[name] = np.asarray([v for _, v in values], np.float64).reshape(iterations, epochs, steps)
  evaluations = recorder.evaluations
  arrays["eval_iterations"] = np.asarray([e["iteration"] for e in evaluations], np.int64)
  bits = arrays["B_after"].shape[2]
  query_codes = [e["query_codes"] for e in evaluations]
  database_codes = [e["database_codes"] for e in evaluations]
  arrays["eval_query_codes"] = np.stack(query_codes) if evaluations else np.zeros((0, 0, bits))
  arrays["eval_database_codes"] = (
    np.stack(database_codes) if evaluations else np.zeros((0, 0, bits))
  )
  arrays["eval_map_reference"] = np.asarray([e["map"] for e in evaluations], np.float64)
  for key, drop_last in (("eval_map_stable", False), ("eval_map_stable_refslice", True)):
    arrays[key] = np.asarray(
      [
        stable_map(q, d, data.query_labels, data.database_labels, drop_last)
        for q, d in zip(query_codes, database_codes)
      ],
      np.float64,
    )
  return arrays


def stable_map(query_codes, database_codes, query_labels, database_labels, drop_last=False):
  """mAP@all with ties in Hamming distance broken by database index (NumPy, written
  apart from schn_jax.evaluation so that the fixture checks it); drop_last keeps the
  reference's `[:-1]` slice, which leaves the last ranked item out."""
  bits = database_codes.shape[1]
  distances = 0.5 * (bits - query_codes.astype(np.float64) @ database_codes.T.astype(np.float64))
  relevant = query_labels.astype(np.float64) @ database_labels.T.astype(np.float64) > 0
  total = 0.0
  for q in range(len(query_codes)):
    hits = relevant[q, np.argsort(distances[q], kind="stable")]
    if drop_last:
      hits = hits[:-1]
    ranks = np.flatnonzero(hits) + 1.0
    if ranks.size:
      total += float(np.mean(np.arange(1, ranks.size + 1) / ranks))
  return total / len(query_codes)


# ---------------------------------------------------------------- the fixture


def float32_vs_float64(float32, float64, variant):
  """The reference's own float32-vs-float64 spread per iteration (README, Tolerances)."""
  iterations = len(float64["B_after"])
  spread = {
    "B_after_fraction_differing": [
      float(np.mean(float32["B_after"][t] != float64["B_after"][t])) for t in range(iterations)
    ]
  }
  for name in TRAJECTORY_LOSSES[variant]:
    spread[f"{name}_max_relative"] = [
      float(
        np.max(
          np.abs(float32[name][t] - float64[name][t]) / np.maximum(np.abs(float64[name][t]), 1e-30)
        )
      )
      for t in range(iterations)
    ]
  spread["eval_query_codes_fraction_differing"] = [
    float(np.mean(a != b)) for a, b in zip(float32["eval_query_codes"], float64["eval_query_codes"])
  ]
  return spread


def fixture_meta(config, data, seed, iterations, commit, digests, spread):
  torch = import_torch()
  stored_channels = data.database_images.shape[-1]
  mean, std = input_normalization(config.data.num_channels, stored_channels)
  swapped = dict(SWAPS)
  if config.backbone != "small_cnn":
    del swapped["backbone"]
  if config.optimizer_semantics != "torch18":
    del swapped["zero_grad"]
  if config.database_init == "zeros":
    del swapped["database_init"]
  labels = np.concatenate([data.database_labels, data.query_labels])
  return {
    "variant": config.variant,
    "seed": seed,
    "database": int(len(data.database_labels)),
    "queries": int(len(data.query_labels)),
    "classes": int(labels.shape[1]),
    "multilabel": int((labels.sum(1) > 1).any()),
    "image_size": int(config.data.image_size),
    "num_channels": int(config.data.num_channels),
    "backbone": config.backbone,
    "code_length": int(config.code_lengths[0]),
    "samples": int(config.sample_size),
    "batch": int(config.batch_size),
    "max_epoch": int(config.max_epoch),
    "max_iter": int(config.max_iter),
    "iterations_recorded": int(iterations),
    "eval_iter": int(config.eval_iter),
    "lr": float(config.learning_rate),
    "weight_decay": float(config.weight_decay),
    "alpha": float(config.alpha),
    "beta": float(config.beta),
    "gamma": float(config.gamma),
    "zero_grad": config.optimizer_semantics,
    "dropout": "off",
    "sampling": config.sampling,
    "database_init": config.database_init,
    "dataset": config.data.name,
    "split_seed": int(config.seed),
    "normalization": f"uint8 HWC ({stored_channels} channels) -> /255 -> (x - image_mean) / "
    f"image_std over {config.data.num_channels} channels (schn_jax.data.normalize) -> CHW",
    "image_mean": mean,
    "image_std": std,
    "swapped": swapped,
    "recorded": RECORDED,
    "reference_commit": commit,
    "reference_sha256": digests,
    "torch_version": torch.__version__,
    "numpy_version": np.__version__,
    "jax_version": jax.__version__,
    "files": {"float32.npz": "the float32 run", "float64.npz": "the float64 run"},
    "config": json.loads(config.to_json_best_effort()),
    "float32_vs_float64": spread,
  }


def fixture_readme(meta):
  lines = [
    f"# {meta['variant']}, {meta['backbone']}, {meta['code_length']} bits, "
    f"{meta['dataset']}: a capture of the reference's train()",
    "",
    f"Made by `python -m schn_jax.parity.capture` from JalinWang/SCHN "
    f"{meta['reference_commit'][:7]} with torch {meta['torch_version']}: "
    f"{meta['iterations_recorded']} outer iterations (max_iter {meta['max_iter']}) of "
    f"{meta['samples']} samples, batch {meta['batch']}, {meta['max_epoch']} epoch(s), "
    f"{meta['database']} database and {meta['queries']} query images of "
    f"{meta['image_size']}x{meta['image_size']} (split seed {meta['split_seed']}), "
    f"zero_grad {meta['zero_grad']}; the config is in meta.json `config`.",
    "",
    "The arrays and tolerances are those of fixtures/trajectory/README.md. Swapped "
    "around the reference's code (meta.json `swapped`):",
    "",
    *[f"- **{name}**: {text}" for name, text in meta["swapped"].items()],
    "",
    f"Recorded: {meta['recorded']}.",
    "",
    "Check it with `python -m schn_jax.parity.check <this folder>`.",
  ]
  return "\n".join(lines) + "\n"


@contextlib.contextmanager
def torch_threads(torch, threads):
  """torch's intra-op threads set to `threads` (None: left alone), then restored."""
  before = torch.get_num_threads()
  if threads:
    torch.set_num_threads(threads)
  try:
    yield torch.get_num_threads()
  finally:
    torch.set_num_threads(before)


def capture(root, config, iterations, out, seed, threads=1):
  """Runs the reference in both precisions and writes the fixture folder `out`.

  threads: torch's intra-op threads. One by default: beside JAX's thread pool in this
  process, two of torch's spinning OpenMP threads ran its loop 5 to 25 times slower on
  a busy 2-core machine. The float32 run's rounding depends on it (fixtures/reference
  README: thread-count noise); the float64 run's codes do not.
  """
  torch = import_torch()
  commit, digests = expected_reference()
  data = load_capture_data(config, iterations)
  runs, manifests = {}, []
  with torch_threads(torch, threads) as used:
    for dtype in DTYPES:
      run = run_reference(root, config, data, dtype, weights="recipe", seed=seed)
      runs[dtype] = {**data.common_arrays(), **run["arrays"]}
      manifests.append(run["recipe"].manifest(config.variant))
  if any(m != manifests[0] for m in manifests):
    raise RuntimeError("the recipe's weights differ between the runs")
  spread = float32_vs_float64(runs["float32"], runs["float64"], config.variant)
  meta = fixture_meta(config, data, seed, iterations, commit, digests, spread)
  meta["torch_threads"] = used
  return fixtures.write_trajectory(out, manifests[0], meta, runs, fixture_readme(meta))


def summary(fixture):
  lines = [f"wrote {fixture.dir}"]
  for dtype in DTYPES:
    arrays = fixture.npz(dtype)
    maps = ", ".join(
      f"{int(i)}: {m:.4f}" for i, m in zip(arrays["eval_iterations"], arrays["eval_map_stable"])
    )
    lines.append(f"  {dtype}: mAP@all (stable ties) after iterations {{{maps}}}")
  spread = fixture.meta["float32_vs_float64"]
  lines.append(
    "  float32 vs float64: "
    + ", ".join(f"{k} max {max(v, default=0.0):.3g}" for k, v in spread.items())
  )
  lines.append(f"check it: python -m schn_jax.parity.check {fixture.dir}")
  return "\n".join(lines)


def define_flags():
  """The command's flags (defined only when it runs: benchmarks import this module)."""
  defined = types.SimpleNamespace(
    config=config_flags.DEFINE_config_file(
      "config", None, "Path to a configs/*.py file.", lock_config=True
    ),
    reference=flags.DEFINE_string(
      "reference", None, "A checkout of JalinWang/SCHN at the fixtures' commit."
    ),
    out=flags.DEFINE_string("out", None, "The fixture folder to write (new or empty)."),
    iterations=flags.DEFINE_integer(
      "iterations", None, "Outer iterations to record (default: config.max_iter)."
    ),
    dtypes=flags.DEFINE_list(
      "dtypes", list(DTYPES), "The runs to make; a trajectory fixture holds both."
    ),
    seed=flags.DEFINE_integer("seed", None, "The weight recipe's seed (default: config.seed)."),
    torch_threads=flags.DEFINE_integer(
      "torch_threads", 1, "torch's intra-op threads (0: torch's default); see `capture`."
    ),
  )
  flags.mark_flags_as_required(["config", "reference", "out"])
  return defined


def main(argv, defined):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  try:
    config = defined.config.value
    config.get("variant")  # ml_collections reports a config file it could not load on first use
  except OSError as error:
    raise errors.UserError(
      f"--config: cannot load the config file: {str(error).splitlines()[-1].strip()}"
    ) from None
  if sorted(defined.dtypes.value) != sorted(DTYPES):
    raise errors.UserError(
      f"--dtypes={','.join(defined.dtypes.value)}: a trajectory fixture holds both runs; "
      "give float32,float64"
    )
  root = check_reference(defined.reference.value)
  import_torch()
  out = pathlib.Path(defined.out.value)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise errors.UserError(f"--out={out}: exists and is not an empty folder; choose a new one")
  if files.inside(out, root):
    raise files.PathError(f"--out={out} is inside --reference={root}: write the fixture elsewhere.")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise files.PathError(f"--out={out}: cannot create it ({error.strerror or error}).") from None
  config = capture_config(config)
  iterations = defined.iterations.value
  iterations = config.max_iter if iterations is None else iterations
  capturable(config, iterations)
  seed = config.seed if defined.seed.value is None else defined.seed.value
  fixture = capture(root, config, iterations, out, seed, defined.torch_threads.value)
  print(summary(fixture))
  return 0


if __name__ == "__main__":
  errors.run(functools.partial(main, defined=define_flags()))
