"""The asymmetric SCHN training run (docs/method.md), checkpointed and resumable.

Sections: configuration checks; model and state; one outer iteration
(sample, soft similarity, epochs of batches, DCC); evaluation; the run.
"""

import copy
import dataclasses
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from schn_jax import data as data_lib
from schn_jax import download, errors, evaluator, files, interop, run_folder, sharding
from schn_jax.inference import Encoder
from schn_jax.interop import pretrained
from schn_jax.models import VARIANTS
from schn_jax.models.visual import BACKBONES, BATCHNORM_MODES
from schn_jax.training.loop import (
  DATABASE_INITS,
  Iteration,
  Pieces,
  batches_per_iteration,
  build,
  initial_database_codes,
  should_evaluate,
  training_positions,
)
from schn_jax.training.reporting import MetricWriter
from schn_jax.training.state import OPTIMIZER_SEMANTICS

ConfigError = errors.ConfigError

# Keys a run folder is tied to: its checkpoints and codes mean nothing under others.
RUN_KEYS = (
  "variant",
  "code_lengths",
  "backbone",
  "data.name",
  "data.image_size",
  "data.num_channels",
)


# ---------------------------------------------------------------- configuration checks


def check_config(config, database_size, train_size):
  """Refuse impossible combinations with a message naming the keys."""
  problems = []
  if config.variant not in VARIANTS:
    problems.append(f"config.variant={config.variant!r}: choose one of {VARIANTS}")
  if config.backbone not in BACKBONES:
    problems.append(f"config.backbone={config.backbone!r}: choose one of {tuple(BACKBONES)}")
  if config.get("batchnorm", BATCHNORM_MODES[0]) not in BATCHNORM_MODES:
    problems.append(f"config.batchnorm={config.batchnorm!r}: one of {BATCHNORM_MODES}")
  lengths = tuple(config.code_lengths)
  if not lengths or any(not isinstance(b, int) or b <= 0 for b in lengths):
    problems.append(f"config.code_lengths={lengths}: give positive integers, e.g. (12, 24, 32, 48)")
  if not 0 < config.sample_size <= train_size:
    problems.append(
      f"config.sample_size={config.sample_size} must be in [1, {train_size}] "
      f"(the protocol trains on {train_size} of the {database_size} database items)"
    )
  devices = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % devices:
    problems.append(
      f"config.batch_size={config.batch_size} must be a positive multiple of the {devices} devices"
    )
  elif (config.sample_size % config.batch_size) % devices:
    problems.append(
      f"the last batch of each epoch holds config.sample_size % config.batch_size = "
      f"{config.sample_size % config.batch_size} items, not a multiple of the "
      f"{devices} devices: change sample_size or batch_size"
    )
  if config.optimizer_semantics not in OPTIMIZER_SEMANTICS:
    problems.append(
      f"config.optimizer_semantics={config.optimizer_semantics!r}: one of "
      f"{OPTIMIZER_SEMANTICS} (the reference pins torch 1.8: 'torch18')"
    )
  if config.dtype not in ("float32", "float64"):
    problems.append(f"config.dtype={config.dtype!r}: 'float32' or 'float64'")
  elif config.dtype == "float64" and not jax.config.jax_enable_x64:
    problems.append("config.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1")
  for key in ("max_iter", "max_epoch", "eval_iter", "checkpoint_every"):
    if config[key] <= 0:
      problems.append(f"config.{key}={config[key]} must be positive")
  for key in ("adversarial_lr_decay", "cycle_lr_decay"):
    decay = config[key]
    milestones = [m for k in decay if k.startswith("milestones") for m in decay[k]]
    if not decay.factor > 0 or any(not isinstance(m, int) for m in milestones):
      problems.append(
        f"config.{key}: factor must be positive and milestones integers (0-based outer iterations)"
      )
  if config.database_init not in DATABASE_INITS:
    problems.append(
      f"config.database_init={config.database_init!r}: one of {DATABASE_INITS} "
      "('zeros' is the reference)"
    )
  if config.sampling not in ("uniform", "cover"):
    problems.append(f"config.sampling={config.sampling!r}: 'uniform' (the reference) or 'cover'")
  problems += evaluator.config_problems(config.eval, database_size)
  if not 0 <= config.dropout_rate < 1:
    problems.append(
      f"config.dropout_rate={config.dropout_rate} must be in [0, 1): 1 drops every feature"
    )
  if problems:
    raise ConfigError("invalid configuration: " + "; ".join(problems))


def check_workdir(config, workdir):
  """Refuses a workdir holding a run of another variant, code lengths or model, by
  its config.json, and one that is a file or lies in the dataset's folder, before
  anything there is touched."""
  if pathlib.Path(workdir).is_file():
    raise files.PathError(f"--workdir={workdir} is a file: give a folder.")
  for key in ("root", "tfds_data_dir"):
    folder = config.data.get(key)
    if folder and files.inside(workdir, folder):
      raise files.PathError(
        f"--workdir={workdir} is inside config.data.{key}={folder}: keep runs out of the dataset."
      )
  if not run_folder.has_config(workdir):
    return
  stored = run_folder.read_config(workdir).to_dict()
  path = pathlib.Path(workdir) / run_folder.CONFIG
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
    raise ConfigError(
      f"{path.parent} holds a run with other settings ({', '.join(differing)}): "
      "use another --workdir, or that run's settings to resume it"
    )


# ---------------------------------------------------------------- the run


def with_pretrained_backbone(config, state):
  """`state` with the backbone of config.pretrained_backbone (interop.pretrained: a
  torchvision state dict of config.backbone, downloaded for 'torchvision'; .pth needs
  torch): its parameters, and BatchNorm's running statistics where it has them, cast
  to the state's dtypes; `state` as it is when the backbone starts from random weights."""
  path = pretrained.weights_path(config)
  if path is None:
    return state
  template = {
    "params": state.params["visual"]["backbone"],
    "batch_stats": state.batch_stats.get("visual", {}).get("backbone", {}),
  }
  loaded = interop.load_torchvision_backbone(path, template, config.backbone)
  loaded = jax.tree_util.tree_map(lambda new, old: jnp.asarray(new, old.dtype), loaded, template)
  batch_stats = state.batch_stats
  if loaded["batch_stats"]:
    visual = {**batch_stats["visual"], "backbone": loaded["batch_stats"]}
    batch_stats = {**batch_stats, "visual": visual}
  return state.replace(
    params={**state.params, "visual": {**state.params["visual"], "backbone": loaded["params"]}},
    batch_stats=batch_stats,
  )


@dataclasses.dataclass
class Run:
  """One code length of a run: its fixed pieces, its state (replicated over `mesh`),
  its checkpoints and what they record beside the state (`meta`)."""

  pieces: Pieces
  state: Any
  mesh: Any
  checkpoints: run_folder.Checkpoints
  meta: dict


def restore_run(config, data, bits, workdir):
  """One code length's Run: from its latest readable checkpoint in
  workdir/bits_<bits> when there is one (unreadable newer ones set aside),
  fresh otherwise, with the pretrained backbone if any (a checkpoint holds
  trained weights, so resuming never reads the .pth)."""
  size = config.data.image_size
  channels = config.data.num_channels or data.source.image(0).shape[-1]
  image_shape = data.normalize(np.zeros((1, size, size, channels), np.uint8)).shape[1:]
  pieces, state = build(
    config, bits, image_shape, data.source.num_classes, len(data.split.database)
  )
  mesh = sharding.make_mesh()
  # Replicated before the restore, so the checkpoint is read into the same layout.
  state = sharding.replicate(state, mesh)
  checkpoints = run_folder.Checkpoints(workdir, bits, config.checkpoint_every)
  meta = {
    "bits": bits,
    "variant": config.variant,
    "dataset": config.data.name,
    "train_seconds": 0.0,
    "history": [],
  }
  restored, saved_meta = checkpoints.restore(state)
  if restored is None:
    codes = initial_database_codes(
      config, data.labels[data.split.database], bits, state.database_codes.dtype
    )
    state = state.replace(database_codes=sharding.replicate(codes, mesh))
    state = sharding.replicate(with_pretrained_backbone(config, state), mesh)
  else:
    for key in ("bits", "variant", "dataset"):
      if saved_meta.get(key) != meta[key]:
        raise ConfigError(
          f"{run_folder.bits_dir(workdir, bits)}: the checkpoint was written with {key}="
          f"{saved_meta.get(key)!r}, this run has {meta[key]!r}; use another --workdir"
        )
    state, meta = restored, saved_meta
    logging.info("bits %d: resumed from iteration %d", bits, int(state.iteration))
    checkpoints.set_aside_damaged()
  return Run(pieces, state, mesh, checkpoints, meta)


def train_code_length(config, data, bits, workdir, writer):
  """Trains (or resumes) one code length; returns its final metrics."""
  directory = run_folder.bits_dir(workdir, bits)
  run = restore_run(config, data, bits, workdir)
  model, state, checkpoints, meta = run.pieces.model, run.state, run.checkpoints, run.meta
  iteration_program = Iteration(config, data, run.pieces, run.mesh)
  evaluate = evaluator.Evaluator(data, config.eval)
  encoder = lambda state: Encoder(
    model,
    config.data.num_channels,
    {"params": state.params, "batch_stats": state.batch_stats},
    run.mesh,
  )
  total = config.max_iter * batches_per_iteration(config)
  final = None
  # Leaving the block waits for the checkpoint being written, also on Ctrl-C or an error.
  with (
    checkpoints,
    tqdm.tqdm(
      total=total,
      initial=int(state.iteration) * batches_per_iteration(config),
      desc=f"{config.variant} {bits} bits",
      unit="batch",
      disable=jax.process_index() != 0,
    ) as progress,
  ):
    while int(state.iteration) < config.max_iter:
      errors.check_interrupted()
      started = time.perf_counter()
      state, step_losses, images_seen = iteration_program(state)
      progress.update(batches_per_iteration(config))
      losses_mean = {name: float(np.mean(values)) for name, values in step_losses.items()}
      seconds = time.perf_counter() - started
      meta["train_seconds"] += seconds
      iteration = int(state.iteration)
      scalars = {f"train/{k}": v for k, v in losses_mean.items()}
      scalars.update(
        {"train/iteration_seconds": seconds, "train/images_per_second": images_seen / seconds}
      )
      # Before evaluating, so that an evaluation that fails loses no training; the
      # copy keeps the history appended below out of the save in flight.
      checkpoints.save(iteration, state, copy.deepcopy(meta), force=iteration == config.max_iter)
      if should_evaluate(config, iteration):
        last = iteration == config.max_iter
        result = evaluate(encoder(state), state.database_codes, directory if last else None)
        final = result if last else None
        meta["history"].append({"iteration": iteration, "map": result["map"]})
        scalars[f"eval/map@{config.eval.topk if config.eval.topk > 0 else 'all'}"] = result["map"]
      writer.write_scalars(iteration, {f"bits_{bits}/{k}": v for k, v in scalars.items()})
      progress.set_postfix(
        loss=f"{losses_mean['loss_cycle']:.4g}", img_s=f"{images_seen / seconds:.0f}"
      )
  if final is None:  # resumed from a finished run, or after its last evaluation failed
    final = evaluate(encoder(state), state.database_codes, directory)
    iteration = int(state.iteration)
    if not meta["history"] or meta["history"][-1]["iteration"] != iteration:
      meta["history"].append({"iteration": iteration, "map": final["map"]})
  summary = {k: v for k, v in final.items() if k != "curves"}
  summary.update(
    topk=config.eval.topk,
    ties=config.eval.ties,
    variant=config.variant,
    iterations=int(state.iteration),
    train_seconds=round(meta["train_seconds"], 2),
    history=meta["history"],
  )
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
  metrics_path = workdir / run_folder.METRICS
  results = {}
  if metrics_path.exists():
    results = run_folder.read_json(metrics_path, "delete it: it is rebuilt from the checkpoints")
  # Every download before anything is written; offline, one error names each missing file.
  download.fetch_all(data_lib.remote_files(config.data) + pretrained.remote_files(config))
  data = data_lib.build_dataset(config.data, str(workdir), config.seed, split_mode="defer")
  check_config(config, len(data.split.database), len(training_positions(data.split)))
  workdir.mkdir(parents=True, exist_ok=True)
  data.write_split(workdir)
  if jax.process_index() == 0:
    run_folder.write_config(workdir, config)
  writer = MetricWriter(str(workdir / run_folder.TENSORBOARD))
  try:
    for bits in config.code_lengths:
      results[str(bits)] = train_code_length(config, data, bits, workdir, writer)
      logging.info(
        "bits %d: mAP %.4f (%s, %s ties, %s database codes)",
        bits,
        results[str(bits)]["map"],
        "all" if config.eval.topk == -1 else f"top {config.eval.topk}",
        config.eval.ties,
        config.eval.database_codes,
      )
      if jax.process_index() == 0:
        run_folder.write_json(metrics_path, results)
  finally:
    writer.close()
  return results
