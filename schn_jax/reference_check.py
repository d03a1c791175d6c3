"""Check schn-jax against captures of the official PyTorch implementation.

    python -m schn_jax.reference_check DIR [DIR ...]

DIR is a fixture folder (the one holding manifest.json) or any folder above
such folders; every one found is checked. In each, the weights are rebuilt from
the recipe and converted to our parameter tree. Then:

- a step fixture (../shared/fixtures/reference/): forward outputs, loss terms,
  one training step (gradients, D/G sub-steps, parameter changes), the DCC
  database-code update and the soft similarity. Our side runs in float64, where
  near-ties (a ReLU input or max-pool window closer than float32 rounding)
  resolve as in exact arithmetic; the well-conditioned quantities (forward,
  losses, DCC) are checked again with our side in float32.
- a trajectory fixture (../shared/fixtures/trajectory/): the project's own outer
  loop (`training.loop.Iteration`, `should_evaluate`, `inference.encode_split`), with only
  the sample and batch order replaced by the recorded ones, replays the run
  in float64 against the reference's float64 run (codes identical, losses to
  1e-6 relative, mAP to 1e-9) and in float32 against its float32 run, within 3x
  the reference's own float32-vs-float64 spread (TRAJECTORY_FLOAT32).

Prints the largest error of every quantity; exits 1 on any mismatch beyond
tolerance, 2 on a malformed folder.
"""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import default as default_config
from schn_jax import data as data_lib
from schn_jax import errors, inference, interop
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.interop import layout
from schn_jax.interop.convert import params_to_state_dict
from schn_jax.interop.fixtures import Fixture, FixtureFormatError, find_fixture_dirs
from schn_jax.interop.layout import GROUP_PREFIX
from schn_jax.models import SCHN, Discriminator
from schn_jax.training import dcc, loop, losses, parallel
from schn_jax.training.state import create_state, make_optimizers
from schn_jax.training.step import StepConfig, make_step_functions

# Absolute tolerance, or relative to the reference array's largest magnitude,
# whichever is looser (the parity bar: 1e-4 absolute, 1e-5 relative).
TOLERANCES = {"forward": (1e-4, 1e-5), "loss": (1e-4, 1e-5), "r": (1e-6, 0.0), "grad": (0.0, 1e-4)}
# Parameter changes after a step: Adam's first step moves each element by about
# +-lr whatever the gradient's size, so elements whose gradient is ~0 can flip
# (fixtures README). All but DELTA_FRACTION of the elements must be within DELTA_ABS.
DELTA_ABS, DELTA_FRACTION = 1e-6, 1e-4
# Per-tensor statistics of gradients and deltas (tensors too large to store in full):
# relative to the reference value (sumsq, maxabs) or to sqrt(numel * sumsq) (sum).
STAT_RELATIVE = {"grad": 1e-4, "delta": 1e-3}
# Tensors whose largest entry is under TINY x the largest of the whole gradient are
# the attention query/key projections: attention weights sit near 1/B, so their
# gradients come from cancellation in the softmax derivative and carry the most
# rounding (torch's own 1-vs-2-thread noise on them: 1.1e-4 relative). They are
# allowed TINY_LOOSENING x the relative tolerance.
TINY, TINY_LOOSENING = 1e-3, 10.0
# The same holds for gradients that reach a tensor ONLY through attention scores:
# in the tomm G step the latent space is the query and key of both reconstructions
# and feeds nothing else, so all its G gradients pass the softmax derivative.
SCORES_ONLY = {"gradG": ("cycle/self_attention_lat.", "cycle/gcn.")}

ATTENTION_BLOCKS = {
  "att_lat": ("latent",),
  "att_image_rec": ("image_rec",),
  "att_label_rec": ("label_rec",),
}


@dataclasses.dataclass
class Comparison:
  quantity: str
  error: float  # largest difference, count of differing entries (exact) or fraction (delta)
  tolerance: float
  exact: bool = False
  measure: str = "max|diff|"

  @property
  def ok(self):
    return self.error == 0 if self.exact else self.error <= self.tolerance


def compare(quantity, ours, reference, kind):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  if ours.shape != reference.shape:
    raise FixtureFormatError(f"{quantity}: reference shape {reference.shape}, ours {ours.shape}")
  absolute, relative = TOLERANCES[kind]
  scale = float(np.max(np.abs(reference))) if reference.size else 0.0
  error = float(np.max(np.abs(ours - reference))) if reference.size else 0.0
  return Comparison(quantity, error, max(absolute, relative * scale))


def compare_exact(quantity, ours, reference):
  ours, reference = np.asarray(ours), np.asarray(reference)
  if ours.shape != reference.shape:
    raise FixtureFormatError(f"{quantity}: reference shape {reference.shape}, ours {ours.shape}")
  return Comparison(quantity, float(np.sum(ours != reference)), 0.0, exact=True)


def fixture_config(fixture, dtype):
  """The run's config: the reference's defaults (configs/default.py) with the
  fixture's hyper-parameters, dropout and augmentation off, as the fixtures ran."""
  meta = fixture.meta
  config = default_config.base_config("fashion_mnist")
  config.variant = fixture.variant
  config.backbone = "alexnet"
  config.dropout_rate = 0.0
  config.dtype = dtype
  for key, meta_key in (
    ("learning_rate", "lr"),
    ("weight_decay", "weight_decay"),
    ("alpha", "alpha"),
    ("beta", "beta"),
    ("gamma", "gamma"),
  ):
    if meta_key not in meta:
      raise FixtureFormatError(f"{fixture.dir / 'meta.json'}: missing {meta_key!r}")
    config[key] = float(meta[meta_key])
  # Step fixtures were made with torch 2 (fixtures README); trajectories say which.
  config.optimizer_semantics = meta.get("zero_grad", "torch2")
  if fixture.kind == "trajectory":
    config.code_lengths = (int(meta["code_length"]),)
    for key, meta_key in (
      ("sample_size", "samples"),
      ("batch_size", "batch"),
      ("max_epoch", "max_epoch"),
      ("max_iter", "max_iter"),
      ("eval_iter", "eval_iter"),
    ):
      config[key] = int(meta[meta_key])
    config.data.image_size = int(meta["image_size"])
    config.data.augment = False
    config.data.test_resize = None
    config.data.num_channels = 3
  return config


def build_model(fixture, bits, classes, size):
  """The SCHN module and our parameters (float32) converted from the recipe weights."""
  model = SCHN(fixture.variant, bits, backbone="alexnet", dropout_rate=0.0)
  template = jax.eval_shape(
    model.init,
    jax.random.key(0),
    jnp.zeros((2, size, size, 3)),
    jnp.zeros((2, classes)),
    jnp.zeros((2, 2)),
  )["params"]
  schn_state, disc_state = fixture.state_dicts()
  params = interop.schn_from_reference(
    schn_state, template, fixture.variant, source=f"{fixture.dir} recipe"
  )
  disc_params = {}
  if disc_state is not None:
    template = jax.eval_shape(
      Discriminator().init, jax.random.key(0), jnp.zeros((1, bits)), jnp.zeros((1, bits))
    )["params"]
    disc_params = interop.discriminator_from_reference(disc_state, template)
  return model, params, disc_params


def cast(tree, dtype):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)


def fixture_batch(fixture, dtype):
  """(images NHWC, labels, batch_sim, batch database codes) from inputs.npz, in `dtype`."""
  images = np.transpose(fixture.get("inputs", "images"), (0, 2, 3, 1))
  return tuple(
    np.asarray(x, dtype)
    for x in (
      images,
      fixture.get("inputs", "labels"),
      fixture.get("inputs", "batch_sim"),
      fixture.get("inputs", "B_codes"),
    )
  )


def forward_with_intermediates(model, params, images, labels, adjacency):
  """Deterministic forward; returns the outputs plus the captured attention and conv
  intermediates under the fixtures' forward.npz names."""
  outputs, state = model.apply(
    {"params": params},
    images,
    labels,
    adjacency,
    capture_intermediates=True,
    mutable=["intermediates"],
  )
  inter = state["intermediates"]
  outputs = dict(outputs)
  outputs["conv_features"] = jnp.transpose(
    inter["visual"]["backbone"]["conv_features"][0], (0, 3, 1, 2)
  )
  for name, block in ATTENTION_BLOCKS.items():
    attention = inter["cycle"][block[0]]["attention"]
    outputs[f"{name}_out"] = attention["__call__"][0]
    outputs[f"{name}_weights"] = attention["weights"][0]
  return outputs


def check_forward_and_loss(fixture, config, model, params):
  images, labels, batch_sim, batch_codes = fixture_batch(fixture, config.dtype)
  outputs = forward_with_intermediates(model, cast(params, config.dtype), images, labels, batch_sim)
  results = [
    compare(f"forward/{k}", outputs[k], v, "forward")
    for k, v in sorted(fixture.npz("forward").items())
  ]
  _, terms = losses.cycle_loss(outputs, batch_codes, batch_sim, config.gamma)
  results += [compare(f"loss/{k}", terms[k], fixture.get("loss", k), "loss") for k in sorted(terms)]
  return results


def soft_similarity(sample_labels, database_labels, dtype):
  """(ns, N) soft similarity and its r, as the training loop builds them."""
  r = jnp.asarray(losses.positive_ratio(sample_labels, database_labels), dtype)
  return losses.soften(losses.label_similarity(sample_labels, database_labels), r), r


def check_dcc(fixture, config):
  get = lambda k: jnp.asarray(fixture.get("dcc", k), config.dtype)
  hyper = {k: float(fixture.get("dcc", k)) for k in ("alpha", "beta", "gamma")}
  u, u_label, u_latent = get("U"), get("U_label"), get("U_latent")
  soft, r = soft_similarity(get("labels"), get("labels"), config.dtype)
  results = [
    compare("dcc/r", r, fixture.get("dcc", "r"), "r"),
    compare("dcc/S_soft", soft, fixture.get("dcc", "S_soft"), "r"),
  ]
  for case in ("zero", "rand"):
    codes = dcc.dcc_update(get(f"B_init_{case}"), u, u_label, u_latent, soft, **hyper)
    results.append(compare_exact(f"dcc/B_out_{case}", codes, fixture.get("dcc", f"B_out_{case}")))
  # The real setting: r over the sample against the whole retrieval set, DCC on the sample.
  index = fixture.get("dcc", "subset_sample_index")
  retrieval_labels = get("subset_retrieval_labels")
  soft, r = soft_similarity(retrieval_labels[index], retrieval_labels, config.dtype)
  results.append(compare("dcc/subset_r", r, fixture.get("dcc", "subset_r"), "r"))
  all_codes = get("subset_B_all_init")
  sample_codes = dcc.dcc_update(all_codes[index], u, u_label, u_latent, soft[:, index], **hyper)
  results.append(
    compare_exact("dcc/subset_B_out", sample_codes, fixture.get("dcc", "subset_B_out"))
  )
  results.append(
    compare_exact(
      "dcc/subset_B_all_after",
      all_codes.at[index].set(sample_codes),
      fixture.get("dcc", "subset_B_all_after"),
    )
  )
  return results


def reference_keyed(variant, params=None, disc_params=None):
  """Our trees -> {'group/key': numpy array} named as the fixtures' step.npz.
  `params` may hold only some spaces (e.g. {'cycle': ...} for the G gradients)."""
  prefix_group = {p: g for g, p in GROUP_PREFIX.items() if p}
  rules = [r for r in layout.schn_rules(variant) if params and r[1][0] in params]
  out = {}
  for key, value in params_to_state_dict(params or {}, rules).items():
    prefix, rest = key.split(".", 1)
    out[f"{prefix_group[prefix + '.']}/{rest}"] = np.asarray(value)
  if disc_params:
    for key, value in params_to_state_dict(disc_params, layout.discriminator_rules()).items():
      out[f"disc/{key}"] = np.asarray(value)
  return out


def deltas(after, before):
  """new - old per key, as the fixtures take it: a float64 difference of float32 values.
  Parameters of a float64 run are stored as float32 first, as torch's are: a step of
  ~4e-5 on a weight near 1 is only kept to float32's 6e-8 there (1.5e-3 of the step)."""
  as_stored = lambda x: x.astype(np.float32).astype(np.float64)
  return {k: as_stored(v) - as_stored(before[k]) for k, v in after.items()}


def compare_deltas(delta, step):
  """The fixtures' rule over every stored delta element of the variant, pooled."""
  keys = [str(k) for k in step["full_delta_keys"]]
  diffs = [np.abs(delta[k] - step[f"delta__{k.replace('/', '__')}"]).ravel() for k in keys]
  over = [int(np.sum(d > DELTA_ABS)) for d in diffs]
  worst = keys[int(np.argmax(over))] if any(over) else None
  return Comparison(
    f"step/delta_full ({sum(d.size for d in diffs)} elements"
    + (f"; most in {worst}" if worst else "")
    + ")",
    sum(over) / sum(d.size for d in diffs),
    DELTA_FRACTION,
    measure=f"fraction >{DELTA_ABS:g}",
  )


def compare_statistics(fixture, stat_prefix, tensors, kind):
  """Per-tensor sum / sumsq / maxabs against `<stat_prefix>_*` of step.npz, worst key reported."""
  keys = [str(k) for k in fixture.get("step", "param_keys")]
  present = (
    fixture.get("step", f"{stat_prefix}_present")
    if (f"{stat_prefix}_present" in fixture.npz("step"))
    else np.ones(len(keys), bool)
  )
  maxabs = fixture.get("step", f"{stat_prefix}_maxabs")
  tiny = maxabs < TINY * np.nanmax(np.where(present, maxabs, np.nan))
  tiny |= np.array([k.startswith(SCORES_ONLY.get(stat_prefix, ())) for k in keys])
  results = []
  for stat in ("sum", "sumsq", "maxabs"):
    reference = fixture.get("step", f"{stat_prefix}_{stat}")
    worst, worst_key, limit = 0.0, None, STAT_RELATIVE[kind]
    for i, key in enumerate(keys):
      if not present[i] or key not in tensors:
        continue
      tolerance = STAT_RELATIVE[kind] * (TINY_LOOSENING if tiny[i] else 1.0)
      t = tensors[key].astype(np.float64)
      ours = {"sum": t.sum(), "sumsq": np.square(t).sum(), "maxabs": np.abs(t).max()}[stat]
      sumsq = fixture.get("step", f"{stat_prefix}_sumsq")[i]
      scale = np.sqrt(t.size * sumsq) if stat == "sum" else abs(reference[i])
      error = abs(ours - reference[i]) / max(scale, 1e-30)
      if error / tolerance > worst / limit:
        worst, worst_key, limit = error, key, tolerance
    results.append(
      Comparison(
        f"step/{stat_prefix}_{stat}" + (f" [{worst_key}]" if worst_key else ""),
        worst,
        limit,
        measure="max rel",
      )
    )
  return results


def check_step(fixture, config, model, params, disc_params):
  """One training step from the fixture's weights and batch, sub-step by sub-step."""
  images, labels, _, batch_codes = fixture_batch(fixture, config.dtype)
  batch = {"images": images, "labels": labels, "database_codes": batch_codes}
  variant = fixture.variant
  optimizers = make_optimizers(config.weight_decay, config.optimizer_semantics, params["cycle"])
  discriminator = Discriminator()
  state = create_state(
    params,
    disc_params,
    optimizers,
    1,
    batch_codes.shape[1],
    jax.random.key(0),
    jnp.dtype(config.dtype),
  )
  step_config = StepConfig.from_config(config)
  cycle_update, adversarial_update, train_step = make_step_functions(
    model, discriminator, optimizers, step_config
  )
  rng = jax.random.key(0)
  step = fixture.npz("step")
  before = reference_keyed(variant, state.params, state.disc_params)

  after_cycle, _, terms, grads = jax.jit(cycle_update, static_argnames="train")(
    state, batch, rng, train=False
  )
  results = [compare("step/loss_cycle", terms["loss_cycle"], step["loss_cycle"], "loss")]
  grads = reference_keyed(variant, grads)
  results += [
    compare(f"step/grad/{k}", grads[k], step[f"grad__{k.replace('/', '__')}"], "grad")
    for k in map(str, step["full_grad_keys"])
  ]
  results += compare_statistics(fixture, "grad", grads, "grad")
  if step_config.adversarial:
    _, metrics, probes = jax.jit(adversarial_update, static_argnames="train")(
      after_cycle, batch, rng, train=False
    )
    delta_cycle = deltas(
      reference_keyed(variant, after_cycle.params, after_cycle.disc_params), before
    )
    results += compare_statistics(fixture, "delta_after_cycle", delta_cycle, "delta")
    del delta_cycle
    results += [
      compare(f"step/{k}", metrics[k], step[k], "loss")
      for k in ("lossD_real", "lossD_fake", "lossD", "lossG")
    ]
    results += [
      compare(f"step/{k}", probes[k], step[k], "forward")
      for k in ("D_real_probs", "D_fake_probs", "G_probs")
    ]
    results += [
      compare(f"step/reforward_{k}", probes["reforward"][k], step[f"reforward_{k}"], "forward")
      for k in ("U_image", "U_label", "U_latent", "U_image_rec", "U_label_rec")
    ]
    results += compare_statistics(
      fixture, "gradD", reference_keyed(variant, None, probes["gradD"]), "grad"
    )
    results += compare_statistics(
      fixture, "gradG", reference_keyed(variant, {"cycle": probes["gradG"]}), "grad"
    )
  del after_cycle
  # Parameter changes come from the composed step the trainer runs, not the sub-steps.
  final, _, _ = jax.jit(train_step, static_argnames="train")(state, batch, rng, train=False)
  delta = deltas(reference_keyed(variant, final.params, final.disc_params), before)
  results.append(compare_deltas(delta, step))
  results += compare_statistics(fixture, "delta", delta, "delta")
  return results


# ---------------------------------------------------------------- trajectories

# float64 against float64 (trajectory README): identical codes, losses and mAP to these.
TRAJECTORY_FLOAT64 = {"loss": 1e-6, "map": 1e-9}
# float32 against float32: within SPREAD_FACTOR x the reference's own float32-vs-float64
# spread of each iteration, plus these floors.
SPREAD_FACTOR = 3.0
TRAJECTORY_FLOAT32 = {"fraction": 0.005, "loss": 1e-4}
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
  model, params, disc_params = build_model(fixture, bits, data.source.num_classes, size)
  model, discriminator, optimizers, step_config, _ = loop.build(
    config, bits, (size, size, 3), data.source.num_classes, len(data.split.database)
  )
  mesh = parallel.make_mesh()
  state = parallel.replicate(
    create_state(
      params,
      disc_params,
      optimizers,
      len(data.split.database),
      bits,
      jax.random.key(config.seed),
      jnp.dtype(dtype),
    ),
    mesh,
  )
  iteration = loop.Iteration(config, data, model, discriminator, optimizers, step_config, mesh)
  labels = data.labels
  for t in range(int(fixture.meta["iterations_recorded"])):
    state, step_losses, _ = iteration(state, plan=(arrays["samples"][t], arrays["epoch_orders"][t]))
    evaluation = None
    if loop.should_evaluate(config, t + 1):
      query_codes = inference.encode_split(
        model, state.params, data, data.split.query, config.eval.batch_size
      )
      database_codes = parallel.to_host(state.database_codes)
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


def relative_error(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  if ours.shape != reference.shape:
    raise FixtureFormatError(f"reference shape {reference.shape}, ours {ours.shape}")
  return float(np.max(np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-30)))


def fraction_differing(ours, reference):
  ours, reference = np.asarray(ours), np.asarray(reference)
  if ours.shape != reference.shape:
    raise FixtureFormatError(f"reference shape {reference.shape}, ours {ours.shape}")
  return float(np.mean(ours != reference))


def check_trajectory(fixture, dtype):
  """Every iteration's codes and losses and every evaluation of one run, in `dtype`."""
  arrays = fixture.npz(dtype)
  spread = fixture.meta["float32_vs_float64"]
  eval_iterations = [int(i) for i in arrays["eval_iterations"]]
  results, evaluated = [], []
  for t, state, step_losses, evaluation in replay(fixture, dtype):
    codes = parallel.to_host(state.database_codes)
    if dtype == "float64":
      results.append(compare_exact(f"iteration {t}/B_after", codes, arrays["B_after"][t]))
    else:
      limit = (
        SPREAD_FACTOR * spread["B_after_fraction_differing"][t] + TRAJECTORY_FLOAT32["fraction"]
      )
      results.append(
        Comparison(
          f"iteration {t}/B_after",
          fraction_differing(codes, arrays["B_after"][t]),
          limit,
          measure="fraction differing",
        )
      )
    for name in TRAJECTORY_LOSSES[fixture.variant]:
      error = relative_error(step_losses[name], arrays[name][t])
      limit = (
        TRAJECTORY_FLOAT64["loss"]
        if dtype == "float64"
        else SPREAD_FACTOR * spread[f"{name}_max_relative"][t] + TRAJECTORY_FLOAT32["loss"]
      )
      results.append(Comparison(f"iteration {t}/{name}", error, limit, measure="max rel"))
    if evaluation is None:
      continue
    evaluated.append(t + 1)
    if t + 1 not in eval_iterations:
      continue  # reported below as a schedule mismatch
    v = eval_iterations.index(t + 1)
    query_codes, maps = evaluation
    if dtype == "float64":
      results.append(
        compare_exact(f"eval {t + 1}/query_codes", query_codes, arrays["eval_query_codes"][v])
      )
      for ties, key in (("stable", "eval_map_stable"), ("reference", "eval_map_stable_refslice")):
        results.append(
          Comparison(
            f"eval {t + 1}/map ({ties} ties)",
            abs(maps[ties] - arrays[key][v]),
            TRAJECTORY_FLOAT64["map"],
            measure="|diff|",
          )
        )
    else:
      limit = (
        SPREAD_FACTOR * spread["eval_query_codes_fraction_differing"][v]
        + TRAJECTORY_FLOAT32["fraction"]
      )
      results.append(
        Comparison(
          f"eval {t + 1}/query_codes",
          fraction_differing(query_codes, arrays["eval_query_codes"][v]),
          limit,
          measure="fraction differing",
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


# ---------------------------------------------------------------- all checks


def precision(dtype):
  """64-bit JAX for a float64 run, the default for float32 (restored afterwards)."""
  return jax.enable_x64(dtype == "float64")


def check_step_fixture(fixture):
  batch, bits, classes, size = fixture.dims()
  model, params, disc_params = build_model(fixture, bits, classes, size)
  results = []
  for dtype in ("float64", "float32"):
    with precision(dtype):
      config = fixture_config(fixture, dtype)
      checks = check_forward_and_loss(fixture, config, model, params) + check_dcc(fixture, config)
      # Gradients and parameter changes only in float64: in float32 a near-tie can flip
      # one ReLU or max-pool choice and move whole gradient tensors (near-tie/README.md).
      if dtype == "float64":
        checks += check_step(fixture, config, model, params, disc_params)
    results += [dataclasses.replace(c, quantity=f"{dtype} {c.quantity}") for c in checks]
  return results


def check_fixture(directory):
  """All comparisons for one fixture folder."""
  fixture = Fixture(directory)
  if fixture.kind == "step":
    return check_step_fixture(fixture)
  results = []
  for dtype in ("float64", "float32"):
    with precision(dtype):
      results += check_trajectory(fixture, dtype)
  return results


def report(directory, results, out=None):
  out = out or sys.stdout
  print(f"== {directory}", file=out)
  for c in results:
    status = "ok" if c.ok else "MISMATCH"
    measure = (
      f"{int(c.error)} differing"
      if c.exact
      else f"{c.measure} {c.error:.3e}  (tol {c.tolerance:.1e})"
    )
    print(f"  {status:8s} {c.quantity:40s} {measure}", file=out)


def main(argv):
  if len(argv) < 2:
    print(__doc__.strip(), file=sys.stderr)
    return 2
  # Parity needs full float32 matmuls on every backend (GPU/TPU default to lower precision).
  jax.config.update("jax_default_matmul_precision", "highest")
  failed = 0
  try:
    directories = [d for root in argv[1:] for d in find_fixture_dirs(root)]
    for directory in directories:
      results = check_fixture(directory)
      report(directory, results)
      failed += sum(not c.ok for c in results)
  except errors.UserError as e:
    print(f"error: {errors.one_line(e)}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  print(
    f"{len(directories)} fixture folder(s) checked: "
    + ("all quantities within tolerance" if not failed else f"{failed} mismatch(es)")
  )
  return 1 if failed else 0


if __name__ == "__main__":
  errors.run(main)  # absl flags, as every entry point; main's return value is the exit status
