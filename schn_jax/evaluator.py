"""Evaluation: the retrieval metrics of a dataset's query/database split, for any encoder.

    evaluator = Evaluator(data, config.eval)
    metrics = evaluator(encoder, learned_codes, output_dir)   # encoder: inference.Encoder

Query codes are the query images encoded. Database codes are the learned
asymmetric codes (config.eval.database_codes='learned', as the reference
evaluates) or the database images encoded ('encoded', the inductive mode: what
a deployed model would give new images). Training evaluates its state with an
Evaluator; `evaluate_run` (eval.py --workdir) evaluates a run folder's
checkpoints with one, reading only what it needs of them.
"""

import logging
import os
import pathlib

import jax
import numpy as np

from schn_jax import data as data_lib
from schn_jax import errors, run_folder, sharding
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.evaluation import plots
from schn_jax.inference import Encoder
from schn_jax.models import SCHN

DATABASE_CODES = ("learned", "encoded")


def config_problems(eval_config, database_size):
  """What is wrong with a config's `eval` block, as `config.eval.<key>=...` phrases."""
  problems = []
  if eval_config.database_codes not in DATABASE_CODES:
    problems.append(
      f"config.eval.database_codes={eval_config.database_codes!r}: "
      "'learned' (the reference's asymmetric codes) or 'encoded'"
    )
  if eval_config.ties not in metrics_lib.TIE_MODES:
    problems.append(f"config.eval.ties={eval_config.ties!r}: one of {metrics_lib.TIE_MODES}")
  if eval_config.topk != -1 and not 0 < eval_config.topk <= database_size:
    problems.append(
      f"config.eval.topk={eval_config.topk} must be -1 (all) or in [1, {database_size}]"
    )
  if not isinstance(eval_config.batch_size, int) or eval_config.batch_size <= 0:
    problems.append(f"config.eval.batch_size={eval_config.batch_size!r} must be a positive integer")
  return problems


class Evaluator:
  """mAP, precision-recall and P@N curves of `data`'s query/database split under
  `eval_config` (topk, ties, database_codes, batch_size)."""

  def __init__(self, data, eval_config):
    self.data = data
    self.config = eval_config

  def encode(self, encoder, indices):
    """sign(U_image) of the dataset's images at `indices` (test transform)."""
    batch_size = encoder.rounded_batch_size(self.config.batch_size)
    return encoder.signs(self.data.batches(indices, batch_size, train=False), len(indices))

  def __call__(self, encoder, learned_codes=None, output_dir=None):
    """The metrics (with curves) of `encoder` (an inference.Encoder); `learned_codes`,
    the (N, bits) database codes training learned, are needed when
    database_codes='learned'. With `output_dir`, process 0 writes the codes
    (codes.npz) and the curves (curves.png) there."""
    split, labels = self.data.split, self.data.labels
    query_codes = self.encode(encoder, split.query)
    if self.config.database_codes == "learned":
      if isinstance(learned_codes, jax.Array):
        learned_codes = sharding.to_host(learned_codes)
      database_codes = np.asarray(learned_codes)
    else:
      database_codes = self.encode(encoder, split.database)
    query_labels, database_labels = labels[split.query], labels[split.database]
    metrics = metrics_lib.evaluate_codes(
      query_codes,
      database_codes,
      query_labels,
      database_labels,
      topk=self.config.topk,
      ties=self.config.ties,
    )
    metrics["database_codes"] = self.config.database_codes
    if output_dir is not None and jax.process_index() == 0:
      codes_lib.save_codes(
        output_dir / run_folder.CODES, query_codes, database_codes, query_labels, database_labels
      )
      plots.plot_curves(metrics, output_dir / run_folder.CURVES)
    return metrics


def writable(directory):
  return os.access(directory, os.W_OK)


def evaluate_run(workdir, overrides=None, output_dir=None):
  """Re-evaluates the newest readable checkpoint of every code length of a
  finished or running run in `workdir` (its config.json and split); `overrides`
  may set eval.* keys.

  Writes codes.npz, curves.png and metrics.json to output_dir/bits_<c>/ when
  `output_dir` is given, else to workdir/bits_<c>/eval/ when the workdir is
  writable, else nothing (with a warning saying so). Never writes elsewhere in
  the workdir.
  """
  workdir = pathlib.Path(workdir)
  config = run_folder.read_config(workdir)
  for key, value in (overrides or {}).items():
    config.eval[key] = value
  data = data_lib.build_dataset(config.data, str(workdir), config.seed, split_mode="load")
  problems = config_problems(config.eval, len(data.split.database))
  if problems:
    raise errors.ConfigError("invalid configuration: " + "; ".join(problems))
  if output_dir is None and not writable(workdir):
    logging.warning(
      "%s is not writable: nothing is written; give --output_dir=DIR to keep "
      "codes.npz, curves.png and metrics.json",
      workdir,
    )
  evaluator = Evaluator(data, config.eval)
  learned = config.eval.database_codes == "learned"
  results = {}
  for bits in config.code_lengths:
    saved = run_folder.read_checkpoint(workdir, bits, database_codes=learned)
    encoder = Encoder(SCHN.from_config(config, bits), config.data.num_channels, saved.variables)
    if output_dir is not None:
      out = run_folder.bits_dir(output_dir, bits)
    else:
      out = run_folder.eval_dir(workdir, bits) if writable(workdir) else None
    if out is not None and jax.process_index() == 0:
      out.mkdir(parents=True, exist_ok=True)
    metrics = evaluator(encoder, saved.database_codes, out)
    metrics.update(iteration=saved.step, variant=config.variant)
    if out is not None and jax.process_index() == 0:
      run_folder.write_json(out / run_folder.METRICS, metrics)
    results[str(bits)] = {k: v for k, v in metrics.items() if k != "curves"}
  return results
