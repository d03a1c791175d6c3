"""Step fixtures: one forward, the loss terms, one training step (gradients, D/G
sub-steps, parameter changes), the DCC update and the soft similarity.

Our side runs in float64, where near-ties (a ReLU input or max-pool window closer
than float32 rounding) resolve as in exact arithmetic; the well-conditioned
quantities (forward, losses, DCC) are checked again with our side in float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax.interop import layout
from schn_jax.interop.convert import params_to_state_dict
from schn_jax.interop.layout import GROUP_PREFIX
from schn_jax.models import Discriminator
from schn_jax.parity.build import build_model, cast, fixture_config, precision
from schn_jax.parity.tolerances import (
  DELTA_ABS,
  DELTA_FRACTION,
  SCORES_ONLY,
  STAT_RELATIVE,
  TINY,
  TINY_LOOSENING,
  Comparison,
  compare,
  compare_exact,
)
from schn_jax.training import dcc, losses
from schn_jax.training.state import create_state, make_optimizers
from schn_jax.training.step import StepConfig, make_step_functions

ATTENTION_BLOCKS = {
  "att_lat": ("latent",),
  "att_image_rec": ("image_rec",),
  "att_label_rec": ("label_rec",),
}


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
  r = jnp.asarray(dcc.positive_ratio(sample_labels, database_labels), dtype)
  return dcc.soft_similarity(sample_labels, database_labels, r), r


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


def check(fixture):
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
