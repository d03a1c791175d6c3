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
from schn_jax.models import SCHN
from schn_jax.training import dcc, losses

# Absolute tolerance, or relative to the reference array's largest magnitude,
# whichever is looser (the parity bar: 1e-4 absolute, 1e-5 relative).
TOLERANCES = {"forward": (1e-4, 1e-5), "loss": (1e-4, 1e-5), "r": (1e-6, 0.0)}

ATTENTION_BLOCKS = {"att_lat": ("latent",), "att_image_rec": ("image_rec",),
                    "att_label_rec": ("label_rec",)}


@dataclasses.dataclass
class Comparison:
  quantity: str
  error: float  # largest absolute difference (or count of differing entries for exact checks)
  tolerance: float
  exact: bool = False

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


def check_fixture(directory):
  """All comparisons for one variant folder."""
  fixture = Fixture(directory)
  model, params = build_model(fixture)
  return check_forward_and_loss(fixture, model, params) + check_dcc(fixture)


def report(directory, results, out=sys.stdout):
  print(f"== {directory}", file=out)
  for c in results:
    status = "ok" if c.ok else "MISMATCH"
    measure = (f"{int(c.error)} differing" if c.exact
               else f"max|diff| {c.error:.3e}  (tol {c.tolerance:.1e})")
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
