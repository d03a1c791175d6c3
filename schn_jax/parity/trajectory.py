"""Trajectory fixtures: the project's own outer loop (`training.loop.Iteration`,
`should_evaluate`, `evaluator.Evaluator.encode`), with only the sample and batch order
replaced by the recorded ones, replays a whole reference run: in float64 against
the reference's float64 run (codes identical, losses to 1e-6 relative, mAP to 1e-9)
and in float32 against its float32 run, within SPREAD_FACTOR x the reference's own
float32-vs-float64 spread.

The backbone and the input channels come from meta.json (`build.py`); a fixture that
records its input normalization (`image_mean`, `image_std`, captured by
`parity/capture.py`) must have been normalized as our pipeline does.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax import data as data_lib
from schn_jax import evaluator, inference, sharding
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.parity.build import build_model, fixture_config, input_normalization, precision
from schn_jax.parity.fixtures import FixtureFormatError
from schn_jax.parity.tolerances import (
  SPREAD_FACTOR,
  TRAJECTORY_FLOAT32,
  TRAJECTORY_FLOAT64,
  Comparison,
  compare_exact,
  fraction_differing,
  relative_error,
  well_conditioned_iterations,
)
from schn_jax.training import loop
from schn_jax.training.state import create_state

TRAJECTORY_LOSSES = {
  "mmasia": ("loss_cycle",),
  "tomm": ("loss_cycle", "lossD_real", "lossD_fake", "lossG"),
}


def trajectory_data(fixture, arrays, config):
  """The fixture's images as a dataset: database rows first, then the queries."""
  images = np.concatenate([arrays["database_images"], arrays["query_images"]])
  labels = np.concatenate([arrays["database_labels"], arrays["query_labels"]])
  source = data_lib.sources.ArraySource(fixture.dir.name, images, labels)
  database, queries = len(arrays["database_images"]), len(arrays["query_images"])
  split = data_lib.protocols.Split(
    query=np.arange(database, database + queries),
    database=np.arange(database),
    train=np.arange(database),
  )
  return data_lib.RetrievalData(
    config.data, source, split, data_lib.pipeline.Loader(source, config.data)
  )


def check_normalization(fixture, num_channels, stored_channels):
  """Refuses a fixture whose recorded input normalization is not our pipeline's."""
  if "image_mean" not in fixture.meta:
    return  # captured before the key existed: ImageNet statistics on RGB (README)
  ours = input_normalization(num_channels, stored_channels)
  recorded = (fixture.meta["image_mean"], fixture.meta.get("image_std"))
  if not all(
    np.shape(r) == np.shape(o) and np.allclose(np.asarray(r, np.float64), o, rtol=0, atol=1e-9)
    for r, o in zip(recorded, ours)
  ):
    raise FixtureFormatError(
      f"{fixture.dir / 'meta.json'}: image_mean/image_std {list(recorded)} are not what "
      f"schn_jax.data.normalize does for {stored_channels}-channel images and a "
      f"{num_channels}-channel network ({list(ours)}): recapture the fixture"
    )


def replay(fixture, dtype):
  """Runs the project's outer loop (`loop.Iteration`, the program train.py runs) over
  the recorded samples and batch orders.

  Yields, per recorded iteration t: (t, state, per-step losses, evaluation or
  None), the evaluation being (query codes, {ties mode: mAP}).
  """
  arrays = fixture.npz(dtype)
  config = fixture_config(fixture, dtype)
  data = trajectory_data(fixture, arrays, config)
  bits, size = config.code_lengths[0], config.data.image_size
  channels = config.data.num_channels
  check_normalization(fixture, channels, data.source.images.shape[-1])
  _, params, disc_params = build_model(fixture, bits, data.source.num_classes, size)
  pieces, _ = loop.build(
    config, bits, (size, size, channels), data.source.num_classes, len(data.split.database)
  )
  mesh = sharding.make_mesh()
  state = create_state(
    params,
    disc_params,
    pieces.optimizers,
    len(data.split.database),
    bits,
    jax.random.key(config.seed),
    jnp.dtype(dtype),
  )
  initial = loop.initial_database_codes(config, data.labels[data.split.database], bits, dtype)
  state = sharding.replicate(state.replace(database_codes=jnp.asarray(initial)), mesh)
  iteration = loop.Iteration(config, data, pieces, mesh)
  labels = data.labels
  for t in range(int(fixture.meta["iterations_recorded"])):
    state, step_losses, _ = iteration(state, plan=(arrays["samples"][t], arrays["epoch_orders"][t]))
    evaluation = None
    if loop.should_evaluate(config, t + 1):
      encoder = inference.Encoder(
        pieces.model, config.data.num_channels, {"params": state.params}, mesh
      )
      query_codes = evaluator.Evaluator(data, config.eval).encode(encoder, data.split.query)
      database_codes = sharding.to_host(state.database_codes)
      maps = {
        ties: metrics_lib.evaluate_codes(
          query_codes,
          database_codes,
          labels[data.split.query],
          labels[data.split.database],
          topk=-1,
          ties=ties,
        )["map"]
        for ties in ("stable", "reference")
      }
      evaluation = (query_codes, maps)
    yield t, state, step_losses, evaluation


def compare_codes(quantity, codes, expected, dtype, float32_spread, informational):
  """Codes against the reference's: identical in float64; in float32 a fraction of
  differing bits bounded by the fixture's own float32-vs-float64 spread."""
  if dtype == "float64":
    return compare_exact(quantity, codes, expected)
  return Comparison(
    quantity,
    fraction_differing(codes, expected),
    SPREAD_FACTOR * float32_spread + TRAJECTORY_FLOAT32["fraction"],
    measure="fraction differing",
    informational=informational,
  )


def check_trajectory(fixture, dtype):
  """Every iteration's codes and losses and every evaluation of one run, in `dtype`."""
  arrays = fixture.npz(dtype)
  spread = fixture.meta["float32_vs_float64"]
  eval_iterations = [int(i) for i in arrays["eval_iterations"]]
  window = well_conditioned_iterations(spread, TRAJECTORY_LOSSES[fixture.variant])
  results, evaluated = [], []
  for t, state, step_losses, evaluation in replay(fixture, dtype):
    codes = sharding.to_host(state.database_codes)
    chaotic = dtype == "float32" and t >= window
    results.append(
      compare_codes(
        f"iteration {t}/B_after",
        codes,
        arrays["B_after"][t],
        dtype,
        spread["B_after_fraction_differing"][t],
        chaotic,
      )
    )
    for name in TRAJECTORY_LOSSES[fixture.variant]:
      error = relative_error(step_losses[name], arrays[name][t])
      limit = (
        TRAJECTORY_FLOAT64["loss"]
        if dtype == "float64"
        else SPREAD_FACTOR * spread[f"{name}_max_relative"][t] + TRAJECTORY_FLOAT32["loss"]
      )
      results.append(
        Comparison(f"iteration {t}/{name}", error, limit, measure="max rel", informational=chaotic)
      )
    if evaluation is None:
      continue
    evaluated.append(t + 1)
    if t + 1 not in eval_iterations:
      continue  # reported below as a schedule mismatch
    v = eval_iterations.index(t + 1)
    query_codes, maps = evaluation
    results.append(
      compare_codes(
        f"eval {t + 1}/query_codes",
        query_codes,
        arrays["eval_query_codes"][v],
        dtype,
        spread["eval_query_codes_fraction_differing"][v],
        chaotic,
      )
    )
    if dtype == "float64":
      for ties, key in (("stable", "eval_map_stable"), ("reference", "eval_map_stable_refslice")):
        results.append(
          Comparison(
            f"eval {t + 1}/map ({ties} ties)",
            abs(maps[ties] - arrays[key][v]),
            TRAJECTORY_FLOAT64["map"],
            measure="|diff|",
          )
        )
  recorded = [i for i in eval_iterations if i <= len(arrays["samples"])]
  results.append(
    Comparison(
      f"evaluated after iterations {evaluated} (reference {recorded})",
      float(evaluated != recorded),
      0.0,
      exact=True,
    )
  )
  return [dataclasses.replace(c, quantity=f"{dtype} {c.quantity}") for c in results]


def check(fixture):
  return [c for dtype in ("float64", "float32") for c in _in_precision(fixture, dtype)]


def _in_precision(fixture, dtype):
  with precision(dtype):
    return check_trajectory(fixture, dtype)
