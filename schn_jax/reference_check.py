"""Check schn-jax against captures of the official PyTorch implementation.

    python -m schn_jax.reference_check DIR [DIR ...]

DIR is one variant's fixture folder (the one holding manifest.json) or any
folder above such folders; every one found is checked. For each, the weights
are rebuilt from the recipe, converted to our parameter tree, and the forward
outputs, loss terms, DCC database-code update and soft similarity are compared
with the reference. Prints the largest error of every quantity; exits non-zero
on any mismatch beyond tolerance (see TOLERANCES) or on a malformed folder.
"""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax import interop
from schn_jax.interop.fixtures import Fixture, FixtureFormatError, find_fixture_dirs
from schn_jax.interop import layout
from schn_jax.interop.convert import params_to_state_dict
from schn_jax.interop.layout import GROUP_PREFIX
from schn_jax.models import SCHN, Discriminator
from schn_jax.training import dcc, losses
from schn_jax.training.state import create_state, make_optimizers
from schn_jax.training.step import StepConfig, make_step_functions

WEIGHT_DECAY = 1e-5  # the fixtures' (and the reference's) Adam weight decay

# Absolute tolerance, or relative to the reference array's largest magnitude,
# whichever is looser (the parity bar: 1e-4 absolute, 1e-5 relative).
TOLERANCES = {"forward": (1e-4, 1e-5), "loss": (1e-4, 1e-5), "r": (1e-6, 0.0),
              "grad": (0.0, 1e-4)}
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

ATTENTION_BLOCKS = {"att_lat": ("latent",), "att_image_rec": ("image_rec",),
                    "att_label_rec": ("label_rec",)}


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


def build_model(fixture):
  """The SCHN module and our parameters converted from the fixture's recipe weights."""
  batch, bits, classes, size = fixture.dims()
  model = SCHN(fixture.variant, bits, backbone="alexnet")
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, size, size, 3)),
                            jnp.zeros((batch, classes)), jnp.zeros((batch, batch)))["params"]
  schn_state, _ = fixture.state_dicts()
  params = interop.schn_from_reference(schn_state, template, fixture.variant,
                                       source=f"{fixture.dir} recipe")
  return model, params


def fixture_batch(fixture):
  """(images NHWC, labels, batch_sim, batch database codes) from inputs.npz."""
  images = np.transpose(fixture.get("inputs", "images"), (0, 2, 3, 1))
  return (images, fixture.get("inputs", "labels"), fixture.get("inputs", "batch_sim"),
          fixture.get("inputs", "B_codes"))


def forward_with_intermediates(model, params, images, labels, adjacency):
  """Deterministic forward; returns the outputs plus the captured attention and conv
  intermediates under the fixtures' forward.npz names."""
  outputs, state = model.apply({"params": params}, images, labels, adjacency,
                               capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  outputs = dict(outputs)
  outputs["conv_features"] = jnp.transpose(
      inter["visual"]["backbone"]["conv_features"][0], (0, 3, 1, 2))
  for name, block in ATTENTION_BLOCKS.items():
    attention = inter["cycle"][block[0]]["attention"]
    outputs[f"{name}_out"] = attention["__call__"][0]
    outputs[f"{name}_weights"] = attention["weights"][0]
  return outputs


def check_forward_and_loss(fixture, model, params):
  images, labels, batch_sim, batch_codes = fixture_batch(fixture)
  outputs = forward_with_intermediates(model, params, images, labels, batch_sim)
  results = [compare(f"forward/{k}", outputs[k], v, "forward")
             for k, v in sorted(fixture.npz("forward").items())]
  _, terms = losses.cycle_loss(outputs, batch_codes, batch_sim)
  results += [compare(f"loss/{k}", terms[k], fixture.get("loss", k), "loss") for k in sorted(terms)]
  return results


def check_dcc(fixture):
  get = lambda k: jnp.asarray(fixture.get("dcc", k))
  hyper = {k: float(fixture.get("dcc", k)) for k in ("alpha", "beta", "gamma")}
  u, u_label, u_latent = get("U"), get("U_label"), get("U_latent")
  soft, r = losses.soft_similarity(get("labels"), get("labels"))
  results = [compare("dcc/r", r, fixture.get("dcc", "r"), "r"),
             compare("dcc/S_soft", soft, fixture.get("dcc", "S_soft"), "r")]
  for case in ("zero", "rand"):
    codes = dcc.dcc_update(get(f"B_init_{case}"), u, u_label, u_latent, soft, **hyper)
    results.append(compare_exact(f"dcc/B_out_{case}", codes, fixture.get("dcc", f"B_out_{case}")))
  # The real setting: r over the sample against the whole retrieval set, DCC on the sample.
  index = fixture.get("dcc", "subset_sample_index")
  retrieval_labels = get("subset_retrieval_labels")
  soft, r = losses.soft_similarity(retrieval_labels[index], retrieval_labels)
  results.append(compare("dcc/subset_r", r, fixture.get("dcc", "subset_r"), "r"))
  all_codes = get("subset_B_all_init")
  sample_codes = dcc.dcc_update(all_codes[index], u, u_label, u_latent, soft[:, index], **hyper)
  results.append(compare_exact("dcc/subset_B_out", sample_codes, fixture.get("dcc", "subset_B_out")))
  results.append(compare_exact("dcc/subset_B_all_after", all_codes.at[index].set(sample_codes),
                               fixture.get("dcc", "subset_B_all_after")))
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
  """new - old per key, as the fixtures take it: a float64 difference of float32 values."""
  return {k: v.astype(np.float64) - before[k].astype(np.float64) for k, v in after.items()}


def compare_deltas(delta, step):
  """The fixtures' rule over every stored delta element of the variant, pooled."""
  keys = [str(k) for k in step["full_delta_keys"]]
  diffs = [np.abs(delta[k] - step[f"delta__{k.replace('/', '__')}"]).ravel() for k in keys]
  over = [int(np.sum(d > DELTA_ABS)) for d in diffs]
  worst = keys[int(np.argmax(over))] if any(over) else None
  return Comparison(f"step/delta_full ({sum(d.size for d in diffs)} elements"
                    + (f"; most in {worst}" if worst else "") + ")",
                    sum(over) / sum(d.size for d in diffs), DELTA_FRACTION,
                    measure=f"fraction >{DELTA_ABS:g}")


def compare_statistics(fixture, stat_prefix, tensors, kind):
  """Per-tensor sum / sumsq / maxabs against `<stat_prefix>_*` of step.npz, worst key reported."""
  keys = [str(k) for k in fixture.get("step", "param_keys")]
  present = fixture.get("step", f"{stat_prefix}_present") if (
      f"{stat_prefix}_present" in fixture.npz("step")) else np.ones(len(keys), bool)
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
    results.append(Comparison(f"step/{stat_prefix}_{stat}" + (f" [{worst_key}]" if worst_key else ""),
                              worst, limit, measure="max rel"))
  return results


def check_step(fixture, model, params):
  """One training step from the fixture's weights and batch, sub-step by sub-step."""
  images, labels, _, batch_codes = fixture_batch(fixture)
  batch = {"images": images, "labels": labels, "database_codes": batch_codes}
  variant = fixture.variant
  optimizers = make_optimizers(WEIGHT_DECAY, params["cycle"])
  discriminator = Discriminator()
  _, disc_state = fixture.state_dicts()
  disc_params = {}
  if disc_state is not None:
    bits = batch_codes.shape[1]
    template = jax.eval_shape(discriminator.init, jax.random.key(0), jnp.zeros((1, bits)),
                              jnp.zeros((1, bits)))["params"]
    disc_params = interop.discriminator_from_reference(disc_state, template)
  state = create_state(params, disc_params, optimizers, 1, batch_codes.shape[1], jax.random.key(0))
  config = StepConfig(variant)
  cycle_update, adversarial_update, train_step = make_step_functions(model, discriminator, optimizers, config)
  rng = jax.random.key(0)
  step = fixture.npz("step")
  before = reference_keyed(variant, state.params, state.disc_params)

  after_cycle, _, terms, grads = jax.jit(cycle_update, static_argnames="train")(
      state, batch, rng, train=False)
  results = [compare("step/loss_cycle", terms["loss_cycle"], step["loss_cycle"], "loss")]
  grads = reference_keyed(variant, grads)
  results += [compare(f"step/grad/{k}", grads[k], step[f"grad__{k.replace('/', '__')}"], "grad")
              for k in map(str, step["full_grad_keys"])]
  results += compare_statistics(fixture, "grad", grads, "grad")
  if config.adversarial:
    _, metrics, probes = jax.jit(adversarial_update, static_argnames="train")(
        after_cycle, batch, rng, train=False)
    delta_cycle = deltas(reference_keyed(variant, after_cycle.params, after_cycle.disc_params), before)
    results += compare_statistics(fixture, "delta_after_cycle", delta_cycle, "delta")
    del delta_cycle
    results += [compare(f"step/{k}", metrics[k], step[k], "loss")
                for k in ("lossD_real", "lossD_fake", "lossD", "lossG")]
    results += [compare(f"step/{k}", probes[k], step[k], "forward")
                for k in ("D_real_probs", "D_fake_probs", "G_probs")]
    results += [compare(f"step/reforward_{k}", probes["reforward"][k], step[f"reforward_{k}"], "forward")
                for k in ("U_image", "U_label", "U_latent", "U_image_rec", "U_label_rec")]
    results += compare_statistics(fixture, "gradD", reference_keyed(variant, None, probes["gradD"]),
                                  "grad")
    results += compare_statistics(fixture, "gradG", reference_keyed(variant, {"cycle": probes["gradG"]}),
                                  "grad")
  del after_cycle
  # Parameter changes come from the composed step the trainer runs, not the sub-steps.
  final, _, _ = jax.jit(train_step, static_argnames="train")(state, batch, rng, train=False)
  delta = deltas(reference_keyed(variant, final.params, final.disc_params), before)
  results.append(compare_deltas(delta, step))
  results += compare_statistics(fixture, "delta", delta, "delta")
  return results


def check_fixture(directory):
  """All comparisons for one variant folder."""
  fixture = Fixture(directory)
  model, params = build_model(fixture)
  return (check_forward_and_loss(fixture, model, params) + check_dcc(fixture)
          + check_step(fixture, model, params))


def report(directory, results, out=None):
  out = out or sys.stdout
  print(f"== {directory}", file=out)
  for c in results:
    status = "ok" if c.ok else "MISMATCH"
    measure = (f"{int(c.error)} differing" if c.exact
               else f"{c.measure} {c.error:.3e}  (tol {c.tolerance:.1e})")
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
  except (FixtureFormatError, interop.WeightImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{len(directories)} fixture folder(s) checked: "
        + ("all quantities within tolerance" if not failed else f"{failed} mismatch(es)"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
