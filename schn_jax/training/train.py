"""The asymmetric SCHN training loop (SPEC section 3), checkpointed and resumable.

Sections: configuration checks; model and state; one outer iteration
(sample, soft similarity, epochs of batches, DCC); evaluation; the run.
"""

import copy
import functools
import json
import logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from schn_jax import data as data_lib
from schn_jax import errors
from schn_jax import interop
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.evaluation import plots
from schn_jax.models import SCHN, VARIANTS, Discriminator
from schn_jax.training import dcc, losses, parallel
from schn_jax.training.checkpoint import Checkpoints
from schn_jax.training import reporting
from schn_jax.training.reporting import MetricWriter
from schn_jax.training.state import OPTIMIZER_SEMANTICS, create_state, make_optimizers
from schn_jax.training.losses import positive_ratio
from schn_jax.training.step import StepConfig, make_step_functions


ConfigError = errors.ConfigError

# Keys a run folder is tied to: its checkpoints and codes mean nothing under others.
RUN_KEYS = ("variant", "code_lengths", "backbone", "data.name", "data.image_size",
            "data.num_channels")


# ---------------------------------------------------------------- configuration checks

def training_positions(split):
  """Positions in the database of the protocol's training images, which the outer
  loop samples from (the whole database for CIFAR-10 / Fashion-MNIST, as in ADSH)."""
  positions = np.searchsorted(split.database, split.train)
  inside = positions < len(split.database)
  inside[inside] = split.database[positions[inside]] == split.train[inside]
  if not inside.all():
    raise ConfigError(f"{int((~inside).sum())} training images are not in the database: the "
                      "asymmetric loop learns database codes for the images it trains on")
  return positions


def check_config(config, database_size, train_size):
  """Refuse impossible combinations with a message naming the keys."""
  problems = []
  if config.variant not in VARIANTS:
    problems.append(f"config.variant={config.variant!r}: choose one of {VARIANTS}")
  lengths = tuple(config.code_lengths)
  if not lengths or any(not isinstance(b, int) or b <= 0 for b in lengths):
    problems.append(f"config.code_lengths={lengths}: give positive integers, e.g. (12, 24, 32, 48)")
  if not 0 < config.sample_size <= train_size:
    problems.append(f"config.sample_size={config.sample_size} must be in [1, {train_size}] "
                    f"(the protocol trains on {train_size} of the {database_size} database items)")
  devices = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % devices:
    problems.append(f"config.batch_size={config.batch_size} must be a positive multiple of the "
                    f"{devices} devices")
  elif (config.sample_size % config.batch_size) % devices:
    problems.append(f"the last batch of each epoch holds config.sample_size % config.batch_size = "
                    f"{config.sample_size % config.batch_size} items, not a multiple of the "
                    f"{devices} devices: change sample_size or batch_size")
  if config.optimizer_semantics not in OPTIMIZER_SEMANTICS:
    problems.append(f"config.optimizer_semantics={config.optimizer_semantics!r}: one of "
                    f"{OPTIMIZER_SEMANTICS} (the reference pins torch 1.8: 'torch18')")
  if config.dtype not in ("float32", "float64"):
    problems.append(f"config.dtype={config.dtype!r}: 'float32' or 'float64'")
  elif config.dtype == "float64" and not jax.config.jax_enable_x64:
    problems.append("config.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1")
  if config.parallel not in parallel.KINDS:
    problems.append(f"config.parallel={config.parallel!r}: one of {parallel.KINDS}")
  elif config.parallel == "pmap" and jax.process_count() > 1:
    problems.append(f"config.parallel='pmap' runs on one process, this run has "
                    f"{jax.process_count()}: use 'shard_map'")
  for key in ("max_iter", "max_epoch", "eval_iter", "checkpoint_every"):
    if config[key] <= 0:
      problems.append(f"config.{key}={config[key]} must be positive")
  if config.sampling not in ("uniform", "cover"):
    problems.append(f"config.sampling={config.sampling!r}: 'uniform' (the reference) or 'cover'")
  if config.eval.database_codes not in ("learned", "encoded"):
    problems.append(f"config.eval.database_codes={config.eval.database_codes!r}: "
                    "'learned' (the reference's asymmetric codes) or 'encoded'")
  if config.eval.ties not in metrics_lib.TIE_MODES:
    problems.append(f"config.eval.ties={config.eval.ties!r}: one of {metrics_lib.TIE_MODES}")
  if config.eval.topk != -1 and not 0 < config.eval.topk <= database_size:
    problems.append(f"config.eval.topk={config.eval.topk} must be -1 (all) or in [1, {database_size}]")
  if not isinstance(config.eval.batch_size, int) or config.eval.batch_size <= 0:
    problems.append(f"config.eval.batch_size={config.eval.batch_size!r} must be a positive integer")
  if not 0 <= config.dropout_rate < 1:
    problems.append(f"config.dropout_rate={config.dropout_rate} must be in [0, 1): 1 drops every "
                    "feature")
  if problems:
    raise ConfigError("invalid configuration: " + "; ".join(problems))


def check_workdir(config, workdir):
  """Refuses a workdir holding a run of another variant, code lengths or model, by
  its config.json, before anything there is touched."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    return
  stored = reporting.read_json(path, "train.py writes it when a run starts: use another "
                               "--workdir")
  differing = []
  for key in RUN_KEYS:
    ours, theirs = config, stored
    for part in key.split("."):
      ours = ours.get(part)
      theirs = theirs.get(part) if isinstance(theirs, dict) else None
    ours = list(ours) if isinstance(ours, tuple) else ours  # JSON stores tuples as lists
    if ours != theirs:
      differing.append(f"{key}={theirs!r} there, {ours!r} here")
  if differing:
    raise ConfigError(f"{path.parent} holds a run with other settings ({', '.join(differing)}): "
                      "use another --workdir, or that run's settings to resume it")


# ---------------------------------------------------------------- model and state

def build(config, bits, image_shape, num_classes, database_size):
  """(model, discriminator, optimizers, step config, fresh state)."""
  model = SCHN(config.variant, bits, backbone=config.backbone, dropout_rate=config.dropout_rate)
  discriminator = Discriminator()
  key = jax.random.PRNGKey(config.seed)
  init_key, disc_key, run_key = jax.random.split(jax.random.fold_in(key, bits), 3)
  batch = 2
  params = model.init(init_key, jnp.zeros((batch,) + image_shape), jnp.zeros((batch, num_classes)),
                      jnp.ones((batch, batch)))["params"]
  disc_params = {}
  if config.variant == "tomm":
    disc_params = discriminator.init(disc_key, jnp.zeros((batch, bits)), jnp.zeros((batch, bits)))["params"]
  optimizers = make_optimizers(config.weight_decay, config.optimizer_semantics, params["cycle"])
  state = create_state(params, disc_params, optimizers, database_size, bits, run_key,
                       jnp.dtype(config.dtype))
  step_config = StepConfig.from_config(config)
  return model, discriminator, optimizers, step_config, state


def make_batch_step(model, discriminator, optimizers, step_config, data, mesh, kind):
  """(replicated state, this host's uint8 images and labels, the global batch's
  database rows, rng) -> (state, codes of the global batch, metrics), all replicated.

  The per-device step runs over every device of `mesh` (see `parallel`). Each
  device gathers the database codes of its own rows from the replicated
  (N, c) codes; the step all-gathers them with the features.
  """
  _, _, train_step = make_step_functions(model, discriminator, optimizers, step_config,
                                         axis_name=parallel.DATA_AXIS)

  def per_device(state, images, labels, rows, rng):
    dtype = state.database_codes.dtype
    batch = {"images": data.normalize(images, dtype), "labels": labels.astype(dtype),
             "database_codes": state.database_codes[rows]}
    return train_step(state, batch, rng)

  mapped = parallel.map_step(per_device, mesh, num_rows=3, kind=kind)

  def step(state, images, labels, rows, rng):
    # Every host knows the global batch's rows; the loader gave it only its own images.
    rows = rows[data_lib.pipeline.host_slice(len(rows))]
    return mapped(state, *parallel.shard_rows(mesh, images, labels, rows), rng)

  return step


@jax.jit
def _dcc_rows(database_codes, sample, sample_labels, r, u_image, u_label, u_latent, hyper):
  """DCC on the sampled rows; the (ns, ns) soft similarity is built here, inside jit,
  so that it is one fused pass rather than several eager ones."""
  sample_similarity = losses.soften(losses.label_similarity(sample_labels, sample_labels), r)
  codes = dcc.dcc_update(database_codes[sample], u_image, u_label, u_latent, sample_similarity,
                         **hyper)
  return database_codes.at[sample].set(codes)


# ---------------------------------------------------------------- one outer iteration

_COVER_STREAM = 1  # keeps the permutations' seeds apart from the iterations' (seed, bits, iteration)


def sample_database(config, bits, iteration, database_size, rng):
  """Sorted database positions trained on in outer iteration `iteration`.

  'uniform' (the reference): ns positions uniformly without replacement, anew
  each iteration; rows never drawn keep all-zero codes, so early on mAP is
  bounded by how much of the database has been covered.
  'cover': consecutive ns-blocks of seeded database permutations (a fresh one
  each pass), so ceil(N / ns) iterations give every row a learned code.
  """
  if config.sampling == "uniform":
    return np.sort(rng.choice(database_size, config.sample_size, replace=False))
  blocks = -(-database_size // config.sample_size)
  cover_pass, block = divmod(iteration, blocks)
  order = np.random.default_rng((config.seed, bits, cover_pass, _COVER_STREAM)).permutation(database_size)
  # The last block of a pass is short; it is topped up from the rest of the pass.
  return np.sort(np.roll(order, -block * config.sample_size)[:config.sample_size])


def plan_iteration(config, data, bits, iteration):
  """(sample, epoch_orders): the sorted database positions of outer iteration
  `iteration` and, for each epoch, the order (positions in the sample) its batches
  take, as consecutive chunks of batch_size. mmasia reshuffles every epoch; tomm,
  like the reference, builds its batches once per outer iteration and reuses them."""
  rng = np.random.default_rng((config.seed, bits, iteration))
  pool = training_positions(data.split)
  sample = np.sort(pool[sample_database(config, bits, iteration, len(pool), rng)])
  epochs = config.max_epoch if config.variant == "mmasia" else 1
  orders = np.stack([rng.permutation(len(sample)) for _ in range(epochs)])
  return sample, np.broadcast_to(orders, (config.max_epoch, len(sample)))


def augment_seed(config, bits, iteration, epoch):
  """The train transform's seed: per epoch for mmasia (it re-augments every epoch),
  per outer iteration for tomm (the same augmented pixels in every epoch)."""
  if config.variant == "mmasia":
    return (config.seed, bits, iteration, epoch)
  return (config.seed, bits, iteration)


def epoch_batches(order, batch_size):
  """Consecutive chunks of `order`, the last one smaller (torch's drop_last=False)."""
  return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def run_iteration(config, data, state, batch_step, progress, mesh, plan=None):
  """Trains max_epoch epochs over the iteration's sample and DCC-updates its database codes.

  `plan` is (sample, epoch_orders) as `plan_iteration` returns; parity checks pass
  the reference's recorded ones. Returns (state, per-step losses {name: (E, nb)},
  images seen).

  Every process runs this loop with the same sample and order; each loads only
  its own rows of each batch. The database codes stay replicated on every
  device and the DCC update runs replicated: it is a sequential per-bit pass
  over (ns, c), cheap next to the network, exact, and replicated codes need no
  gather when the next batches read their rows.
  """
  iteration = int(state.iteration)
  codes_dtype = state.database_codes.dtype
  bits = state.database_codes.shape[1]
  sample, epoch_orders = plan if plan is not None else plan_iteration(config, data, bits, iteration)
  database = data.split.database
  labels = data.labels[database]
  r = positive_ratio(labels[sample], labels)
  sample_codes = {k: np.zeros((len(sample), bits), codes_dtype)
                  for k in ("U_image", "U_label", "U_latent")}
  iteration_key = jax.random.fold_in(state.rng, iteration)
  step_losses, steps, images_seen = {}, 0, 0
  for epoch, order in enumerate(epoch_orders):
    chunks = epoch_batches(np.asarray(order), config.batch_size)
    seed = augment_seed(config, bits, iteration, epoch)
    losses_of_epoch = {}
    # Full batches, then the smaller remainder: one loader call per batch size.
    for size in sorted({len(c) for c in chunks}, reverse=True):
      group = [c for c in chunks if len(c) == size]
      batches = data.batches(database[sample[np.concatenate(group)]], size, train=True, seed=seed)
      for positions, batch in zip(group, batches):
        rng_step = jax.random.fold_in(iteration_key, steps)
        state, codes, metrics = batch_step(state, batch["image"], batch["label"],
                                           sample[positions], rng_step)
        for name, value in metrics.items():
          value = float(parallel.to_host(value))
          if not np.isfinite(value):
            raise FloatingPointError(
                f"loss term {name} = {value} at iteration {iteration}, epoch {epoch}, "
                f"step {steps}; the run stops here and keeps the last good checkpoint")
          losses_of_epoch.setdefault(name, []).append(value)
        for name, value in codes.items():
          sample_codes[name][positions] = parallel.to_host(value)
        steps += 1
        images_seen += len(positions)
        progress.update(1)
    for name, values in losses_of_epoch.items():
      step_losses.setdefault(name, []).append(values)
  step_losses = {name: np.array(values) for name, values in step_losses.items()}
  hyper = {k: np.asarray(config[k], codes_dtype) for k in ("alpha", "beta", "gamma")}
  database_codes = _dcc_rows(state.database_codes, *parallel.replicate(
      (sample.astype(np.int32), labels[sample].astype(codes_dtype), np.asarray(r, codes_dtype),
       *(sample_codes[k] for k in ("U_image", "U_label", "U_latent")), hyper), mesh))
  state = state.replace(database_codes=database_codes, iteration=state.iteration + 1)
  return state, step_losses, images_seen


def should_evaluate(config, iteration):
  """After `iteration` completed outer iterations: every eval_iter, and at the end."""
  return iteration % config.eval_iter == 0 or iteration == config.max_iter


def batches_per_iteration(config):
  return config.max_epoch * -(-config.sample_size // config.batch_size)


# ---------------------------------------------------------------- evaluation

@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode_batch(model, normalize, params, images):
  # Module and normaliser are static (hashable), so every evaluation of a run
  # reuses one compiled function instead of tracing a fresh closure each time.
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  return jnp.sign(model.apply({"params": params}, normalize(images, dtype), method=SCHN.encode_images))


def encode(model, params, data, indices, batch_size):
  """sign(U_image) of the images at `indices` (test transform), as float32 {-1, 0, +1}.

  Batches are split over every device of every host (each host loads its own
  rows); the codes are gathered so that every host returns all of them.
  """
  mesh = parallel.make_mesh()
  # Batches are padded, so rounding up to a multiple of the devices only adds padding.
  batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
  params = parallel.replicate(params, mesh)
  out = []
  for start, batch in zip(range(0, len(indices), batch_size),
                          data.batches(indices, batch_size, train=False)):
    n = min(batch_size, len(indices) - start)
    (images,) = parallel.shard_rows(mesh, batch["image"])
    out.append(parallel.to_host(_encode_batch(model, data.normalize, params, images))[:n])
  return np.concatenate(out)


def evaluate(config, model, state, data, output_dir=None):
  """Query codes from the visual network; database codes learned (reference) or encoded."""
  split = data.split
  batch = config.eval.batch_size
  query_codes = encode(model, state.params, data, split.query, batch)
  if config.eval.database_codes == "learned":
    database_codes = parallel.to_host(state.database_codes)
  else:
    database_codes = encode(model, state.params, data, split.database, batch)
  query_labels, database_labels = data.labels[split.query], data.labels[split.database]
  metrics = metrics_lib.evaluate_codes(query_codes, database_codes, query_labels, database_labels,
                                       topk=config.eval.topk, ties=config.eval.ties)
  metrics["database_codes"] = config.eval.database_codes
  if output_dir is not None and jax.process_index() == 0:
    codes_lib.save_codes(output_dir / "codes.npz", query_codes, database_codes, query_labels,
                         database_labels)
    plots.plot_curves(metrics, output_dir / "curves.png")
  return metrics


# ---------------------------------------------------------------- the run

def with_pretrained_backbone(config, state):
  """`state` with the backbone of config.pretrained_backbone (a torchvision AlexNet
  state dict; needs torch), cast to the state's dtypes."""
  template = state.params["visual"]["backbone"]
  backbone = interop.load_torchvision_alexnet(config.pretrained_backbone, template)
  backbone = jax.tree_util.tree_map(lambda new, old: jnp.asarray(new, old.dtype), backbone,
                                    template)
  return state.replace(params={**state.params,
                               "visual": {**state.params["visual"], "backbone": backbone}})


def restore_run(config, data, bits, workdir, read_only=False):
  """The model pieces and the state of one code length: from its latest readable
  checkpoint in workdir/bits_<bits> when there is one, fresh otherwise (with the
  pretrained backbone, if any: a checkpoint holds trained weights, so resuming and
  evaluating never read the .pth).

  read_only: evaluation; nothing is written, and no checkpoint is a CheckpointError.
  """
  directory = workdir / f"bits_{bits}"
  size = config.data.image_size
  channels = config.data.num_channels or data.source.image(0).shape[-1]
  image_shape = data.normalize(np.zeros((1, size, size, channels), np.uint8)).shape[1:]
  model, discriminator, optimizers, step_config, state = build(
      config, bits, image_shape, data.source.num_classes, len(data.split.database))
  mesh = parallel.make_mesh()
  # Replicated before the restore, so the checkpoint is read into the same layout.
  state = parallel.replicate(state, mesh)
  checkpoints = Checkpoints((directory / "checkpoints").absolute(), config.checkpoint_every,
                            read_only=read_only)
  meta = {"bits": bits, "variant": config.variant, "dataset": config.data.name,
          "train_seconds": 0.0, "history": []}
  restored, saved_meta = checkpoints.restore(state)
  if restored is None and read_only:
    raise errors.CheckpointError(f"{directory / 'checkpoints'}: no checkpoint to evaluate; train "
                                 "this code length first (train.py with this --workdir)")
  if restored is None and config.pretrained_backbone:
    state = parallel.replicate(with_pretrained_backbone(config, state), mesh)
  if restored is not None:
    for key in ("bits", "variant", "dataset"):
      if saved_meta.get(key) != meta[key]:
        raise ConfigError(f"{directory}: the checkpoint was written with {key}="
                          f"{saved_meta.get(key)!r}, this run has {meta[key]!r}; use another --workdir")
    state, meta = restored, saved_meta
    logging.info("bits %d: %s iteration %d", bits, "restored" if read_only else "resumed from",
                 int(state.iteration))
    if not read_only:
      checkpoints.set_aside_damaged()
  return model, discriminator, optimizers, step_config, state, mesh, checkpoints, meta


def train_code_length(config, data, bits, workdir, writer):
  """Trains (or resumes) one code length; returns its final metrics."""
  directory = workdir / f"bits_{bits}"
  model, discriminator, optimizers, step_config, state, mesh, checkpoints, meta = restore_run(
      config, data, bits, workdir)
  batch_step = make_batch_step(model, discriminator, optimizers, step_config, data, mesh,
                               config.parallel)
  total = config.max_iter * batches_per_iteration(config)
  final = None
  # Leaving the block waits for the checkpoint being written, also on Ctrl-C or an error.
  with checkpoints, tqdm.tqdm(
      total=total, initial=int(state.iteration) * batches_per_iteration(config),
      desc=f"{config.variant} {bits} bits", unit="batch",
      disable=jax.process_index() != 0) as progress:
    while int(state.iteration) < config.max_iter:
      started = time.perf_counter()
      state, step_losses, images_seen = run_iteration(config, data, state, batch_step, progress, mesh)
      losses_mean = {name: float(np.mean(values)) for name, values in step_losses.items()}
      seconds = time.perf_counter() - started
      meta["train_seconds"] += seconds
      iteration = int(state.iteration)
      scalars = {f"train/{k}": v for k, v in losses_mean.items()}
      scalars.update({"train/iteration_seconds": seconds, "train/images_per_second": images_seen / seconds})
      # Before evaluating, so that an evaluation that fails loses no training; the
      # copy keeps the history appended below out of the save in flight.
      checkpoints.save(iteration, state, copy.deepcopy(meta), force=iteration == config.max_iter)
      if should_evaluate(config, iteration):
        last = iteration == config.max_iter
        result = evaluate(config, model, state, data, directory if last else None)
        final = result if last else None
        meta["history"].append({"iteration": iteration, "map": result["map"]})
        scalars[f"eval/map@{config.eval.topk if config.eval.topk > 0 else 'all'}"] = result["map"]
      writer.write_scalars(iteration, {f"bits_{bits}/{k}": v for k, v in scalars.items()})
      progress.set_postfix(loss=f"{losses_mean['loss_cycle']:.4g}", img_s=f"{images_seen / seconds:.0f}")
  if final is None:  # resumed from a finished run, or after its last evaluation failed
    final = evaluate(config, model, state, data, directory)
    iteration = int(state.iteration)
    if not meta["history"] or meta["history"][-1]["iteration"] != iteration:
      meta["history"].append({"iteration": iteration, "map": final["map"]})
  summary = {k: v for k, v in final.items() if k != "curves"}
  summary.update(topk=config.eval.topk, ties=config.eval.ties, variant=config.variant,
                 iterations=int(state.iteration), train_seconds=round(meta["train_seconds"], 2),
                 history=meta["history"])
  if meta["history"]:
    best = max(meta["history"], key=lambda h: h["map"])
    summary["best_map_selected_on_query_set"] = best
  return summary


def train_and_evaluate(config, workdir):
  """Trains every code length of `config` in `workdir`; writes workdir/metrics.json.

  The workdir's earlier run, the dataset, the split and the config are all
  checked before anything is written, so a refused command leaves no trace.
  """
  workdir = pathlib.Path(workdir)
  check_workdir(config, workdir)
  metrics_path = workdir / "metrics.json"
  results = {}
  if metrics_path.exists():
    results = reporting.read_json(metrics_path, "delete it: it is rebuilt from the checkpoints")
  data = data_lib.build_dataset(config.data, str(workdir), config.seed, split_mode="defer")
  check_config(config, len(data.split.database), len(training_positions(data.split)))
  workdir.mkdir(parents=True, exist_ok=True)
  data.write_split(workdir)
  if jax.process_index() == 0:
    reporting.write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
  writer = MetricWriter(str(workdir / "tensorboard"))
  try:
    for bits in config.code_lengths:
      results[str(bits)] = train_code_length(config, data, bits, workdir, writer)
      logging.info("bits %d: mAP %.4f (%s, %s ties, %s database codes)", bits,
                   results[str(bits)]["map"],
                   "all" if config.eval.topk == -1 else f"top {config.eval.topk}",
                   config.eval.ties, config.eval.database_codes)
      if jax.process_index() == 0:
        reporting.write_json(metrics_path, results)
  finally:
    writer.close()
  return results


def _writable(directory):
  return os.access(directory, os.W_OK)


def evaluate_workdir(workdir, overrides=None, output_dir=None):
  """Re-evaluates the latest checkpoint of every code length of a finished or running
  run in `workdir` (its config.json and split); `overrides` may set eval.* keys.

  Writes codes.npz, curves.png and metrics.json to output_dir/bits_<c>/ when
  `output_dir` is given, else to workdir/bits_<c>/eval/ when the workdir is
  writable, else nothing (with a warning saying so). Never writes elsewhere in
  the workdir.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  if not path.is_file():
    raise errors.CheckpointError(f"{path} not found: --workdir must be a folder written by "
                                 "train.py")
  config = ml_collections.ConfigDict(reporting.read_json(
      path, "train.py writes it when a run starts; without it the run cannot be evaluated"))
  for key, value in (overrides or {}).items():
    config.eval[key] = value
  data = data_lib.build_dataset(config.data, str(workdir), config.seed, split_mode="load")
  check_config(config, len(data.split.database), len(training_positions(data.split)))
  if output_dir is None and not _writable(workdir):
    logging.warning("%s is not writable: nothing is written; give --output_dir=DIR to keep "
                    "codes.npz, curves.png and metrics.json", workdir)
  results = {}
  for bits in config.code_lengths:
    model, _, _, _, state, _, checkpoints, _ = restore_run(config, data, bits, workdir,
                                                           read_only=True)
    checkpoints.close()
    if output_dir is not None:
      out = pathlib.Path(output_dir) / f"bits_{bits}"
    else:
      out = workdir / f"bits_{bits}" / "eval" if _writable(workdir) else None
    if out is not None and jax.process_index() == 0:
      out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(config, model, state, data, out)
    metrics.update(iteration=int(state.iteration), variant=config.variant)
    if out is not None and jax.process_index() == 0:
      reporting.write_json(out / "metrics.json", metrics)
    results[str(bits)] = {k: v for k, v in metrics.items() if k != "curves"}
  return results
