"""SCHN: visual and semantic spaces joined by a semantically cycle-consistent latent space.

The two published variants differ only in what guides each reconstruction
(docs/method.md, "Spaces"); `CYCLE_WIRING` is that difference, and `CycleNet` reads it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from schn_jax.models.latent import TransitiveLatent
from schn_jax.models.reconstruction import Reconstruction
from schn_jax.models.semantic import SemanticNet
from schn_jax.models.visual import BATCHNORM_MODES, VisualNet

# For each reconstruction block: (guide = attention query and key, source = value).
CYCLE_WIRING = {
  "mmasia": {"image_rec": ("label", "latent"), "label_rec": ("image", "latent")},
  "tomm": {"image_rec": ("latent", "label"), "label_rec": ("latent", "image")},
}
VARIANTS = tuple(CYCLE_WIRING)


class CycleNet(nn.Module):
  """The cycle part: transitive latent space plus the two reconstructions.

  F_image and F_label enter with gradients stopped, as in the reference: the
  cycle losses train the cycle part (and U_image/U_label through the
  reconstruction targets), never the feature extractors through this path.
  """

  variant: str
  bits: int
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, image_features, label_features, adjacency, train: bool = False):
    if self.variant not in CYCLE_WIRING:
      raise ValueError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
    spaces = {
      "image": jax.lax.stop_gradient(image_features),
      "label": jax.lax.stop_gradient(label_features),
    }
    spaces["latent"], u_latent = TransitiveLatent(
      self.bits, dropout_rate=self.dropout_rate, name="latent"
    )(spaces["image"], spaces["label"], adjacency, train)
    out = {"latent": spaces["latent"], "U_latent": u_latent}
    for block, (guide, source) in CYCLE_WIRING[self.variant].items():
      feature, codes = Reconstruction(self.bits, name=block)(spaces[guide], spaces[source])
      out[f"{block}_feature"] = feature
      out[f"U_{block}"] = codes
    return out


class SCHN(nn.Module):
  """images (B,H,W,C), multi-hot labels (B,K), batch label graph (B,B) -> outputs dict.

  Keys: F_image, U_image, F_label, U_label, latent, U_latent, image_rec_feature,
  U_image_rec, label_rec_feature, U_label_rec.
  """

  variant: str
  bits: int
  backbone: str = "alexnet"
  dropout_rate: float = 0.5
  batchnorm: str = "train"  # visual.BATCHNORM_MODES

  @classmethod
  def from_config(cls, config, bits):
    """The model of a run's config at one code length."""
    return cls(
      config.variant,
      bits,
      backbone=config.backbone,
      dropout_rate=config.dropout_rate,
      # Runs saved before the key existed have no BatchNorm: any mode reads them alike.
      batchnorm=config.get("batchnorm", BATCHNORM_MODES[0]),
    )

  def setup(self):
    self.visual = VisualNet(self.bits, self.backbone, self.dropout_rate, self.batchnorm)
    self.semantic = SemanticNet(self.bits)
    self.cycle = CycleNet(self.variant, self.bits, self.dropout_rate)

  def __call__(
    self,
    images,
    labels,
    adjacency,
    train: bool = False,
    gather=None,
    first_row=0,
    device_sum=None,
  ):
    """`gather` (per-device runs) maps this device's rows to the global batch's rows
    before the cycle part, which couples all samples; `adjacency` is then global.
    `first_row` is the global index of this device's first row (its dropout masks);
    `device_sum` sums over the devices (BatchNorm's global batch statistics)."""
    f_image, u_image = self.visual(images, train, first_row, device_sum)
    f_label, u_label = self.semantic(labels)
    out = {"F_image": f_image, "U_image": u_image, "F_label": f_label, "U_label": u_label}
    if gather is not None:
      out = {k: gather(v) for k, v in out.items()}
    out.update(self.cycle(out["F_image"], out["F_label"], adjacency, train))
    return out

  def encode_images(self, images):
    """Continuous visual codes U_image (deterministic); sign() gives query codes."""
    return self.visual(images, False)[1]


def variables_template(config, bits, channels, num_classes=None):
  """Shapes and dtypes of SCHN's variables ({'params'} and, for backbones with
  BatchNorm, {'batch_stats'}), computed without computing them: the visual
  network's only ({'visual': ...}) when num_classes is None, else the whole model's."""
  model = SCHN.from_config(config, bits)
  size = config.data.image_size
  key = jax.random.PRNGKey(0)
  if num_classes is None:
    images = jnp.zeros((1, size, size, channels), jnp.float32)
    # Initialising through encode_images creates the visual network only.
    init = lambda: model.init(key, images, method=SCHN.encode_images)
  else:
    images = jnp.zeros((2, size, size, channels), jnp.float32)
    init = lambda: model.init(key, images, jnp.zeros((2, num_classes)), jnp.ones((2, 2)))
  return jax.eval_shape(init)
