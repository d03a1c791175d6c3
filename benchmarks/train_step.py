r"""Training-step speed and memory of each backbone, ours against torch, on this machine.

  python -m benchmarks.train_step [--batch_size=64] [--image_size=224] [--repeats=3]
      [--backbones=alexnet,resnet18,resnet34,resnet50,vgg16] [--variant=tomm]

For each backbone, three measurements, each in a fresh process (so that its peak
resident memory is its own; the figure includes the interpreter and libraries):

- ours, SCHN: the trainer's per-batch step (`training.step.make_step_functions`
  under jax.jit, the state donated): the whole SCHN forward, cycle loss and
  Adam on every parameter, plus for tomm the re-forward, D and G steps;
- ours, backbone: the backbone, a tanh hash layer and a squared-error loss,
  forward, backward and torch-style Adam, jitted;
- torch: the same torchvision model up to the same feature, the same hash
  layer and loss, forward, backward and torch.optim.Adam (train mode).

"ours, backbone" against "torch" is like for like; the SCHN step adds the
semantic and cycle parts (small MLPs and attention on a batch of rows) and
the adversarial steps. Times are the median of --repeats steps after one
warm-up step (for JAX, the compilation); all on synthetic batches, float32.
The machine may be shared: absolute times drift with its load (printed).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Image side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed steps after the warm-up one.")
_BACKBONES = flags.DEFINE_list(
  "backbones", ["alexnet", "resnet18", "resnet34", "resnet50", "vgg16"], "Backbones to time."
)
_VARIANT = flags.DEFINE_enum("variant", "tomm", ["mmasia", "tomm"], "SCHN variant of the step.")
_MEASURE = flags.DEFINE_string(
  "measure", None, "Internal: KIND:BACKBONE, run one measurement and print it as JSON."
)

BITS, NUM_CLASSES, DATABASE_SIZE, WEIGHT_DECAY = 32, 10, 5000, 1e-5
KINDS = ("schn", "backbone", "torch")


def timed(step, repeats):
  """(seconds of the first call, median seconds of the next `repeats`)."""
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def synthetic(batch, size, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)]
  targets = np.sign(rng.standard_normal((batch, BITS))).astype(np.float32)
  return images, labels, targets


# ---------------------------------------------------------------- the three measurements


def measure_schn(backbone, batch, size, repeats, variant):
  import jax

  from configs import default
  from schn_jax.training import loop

  config = default.base_config("cifar10")
  config.variant, config.backbone, config.batch_size = variant, backbone, batch
  pieces, state = loop.build(config, BITS, (size, size, 3), NUM_CLASSES, DATABASE_SIZE)
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params["visual"]["backbone"]))
  _, _, train_step = pieces.step_functions()
  step_fn = jax.jit(train_step, donate_argnums=(0,))
  images, labels, codes = synthetic(batch, size)
  batch_inputs = {"images": images, "labels": labels, "database_codes": codes}
  count = 0

  def step():
    nonlocal state, count
    state, codes, metrics = step_fn(
      state, batch_inputs, jax.random.fold_in(jax.random.key(0), count)
    )
    jax.block_until_ready((state, codes, metrics))
    count += 1

  return params, timed(step, repeats)


def measure_backbone(backbone, batch, size, repeats):
  import jax
  import jax.numpy as jnp

  from schn_jax.models.visual import VisualNet
  from schn_jax.training.state import adam_step, torch_adam

  model = VisualNet(BITS, backbone)
  images, _, targets = synthetic(batch, size)
  variables = model.init(jax.random.key(0), images[:2])
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  adam = torch_adam(WEIGHT_DECAY)
  opt_state = adam.init(params)

  def train_step(params, batch_stats, opt_state, key):
    def loss_fn(params):
      (_, codes), updated = model.apply(
        {"params": params, "batch_stats": batch_stats},
        images,
        True,
        mutable=["batch_stats"],
        rngs={"dropout": key},
      )
      return jnp.mean((codes - targets) ** 2), updated.get("batch_stats", batch_stats)

    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params, opt_state = adam_step(adam, grads, opt_state, params, 1e-4)
    return params, batch_stats, opt_state

  step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
  count = 0

  def step():
    nonlocal params, batch_stats, opt_state, count
    params, batch_stats, opt_state = step_fn(
      params, batch_stats, opt_state, jax.random.fold_in(jax.random.key(1), count)
    )
    jax.block_until_ready(params)
    count += 1

  return sum(x.size for x in jax.tree_util.tree_leaves(params["backbone"])), timed(step, repeats)


def torch_feature_model(backbone):
  """torchvision's model up to the feature our backbone returns."""
  import torch
  import torchvision

  model = getattr(torchvision.models, backbone)(weights=None)
  if backbone.startswith("resnet"):
    model.fc = torch.nn.Identity()
  else:  # AlexNet: up to fc7's ReLU (classifier[:6]); VGG-16: the same (classifier[:5])
    model.classifier = model.classifier[: 6 if backbone == "alexnet" else 5]
  return model


def measure_torch(backbone, batch, size, repeats):
  import torch

  features = torch_feature_model(backbone)
  params = sum(p.numel() for p in features.parameters())
  width = features(torch.zeros(1, 3, size, size)).shape[1]
  model = torch.nn.Sequential(features, torch.nn.Linear(width, BITS), torch.nn.Tanh()).train()
  adam = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=WEIGHT_DECAY)
  images, _, targets = synthetic(batch, size)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  targets = torch.from_numpy(targets)

  def step():
    adam.zero_grad()
    torch.mean((model(images) - targets) ** 2).backward()
    adam.step()

  return params, timed(step, repeats)


def measure(kind, backbone):
  batch, size, repeats = _BATCH.value, _SIZE.value, _REPEATS.value
  if kind == "schn":
    params, (first, seconds) = measure_schn(backbone, batch, size, repeats, _VARIANT.value)
  elif kind == "backbone":
    params, (first, seconds) = measure_backbone(backbone, batch, size, repeats)
  else:
    params, (first, seconds) = measure_torch(backbone, batch, size, repeats)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB -> MiB on Linux
  return {"params": int(params), "first": first, "seconds": seconds, "peak_mib": peak}


# ---------------------------------------------------------------- the table


def run_child(kind, backbone):
  args = [
    sys.executable,
    "-m",
    "benchmarks.train_step",
    f"--measure={kind}:{backbone}",
    f"--batch_size={_BATCH.value}",
    f"--image_size={_SIZE.value}",
    f"--repeats={_REPEATS.value}",
    f"--variant={_VARIANT.value}",
  ]
  result = subprocess.run(args, capture_output=True, text=True, check=False)
  if result.returncode:
    return {"error": (result.stderr.strip().splitlines() or ["?"])[-1][:80]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_name():
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown CPU"
  names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
  return names[0] if names else "unknown CPU"


def main(argv):
  del argv
  if _MEASURE.value:
    kind, backbone = _MEASURE.value.split(":")
    print(json.dumps(measure(kind, backbone)))
    return
  load = lambda: "load average %.2f %.2f %.2f" % os.getloadavg()
  print(
    f"{cpu_name()}, {os.cpu_count()} CPUs; batch {_BATCH.value}, {_SIZE.value} px, "
    f"{BITS} bits, SCHN {_VARIANT.value}; median of {_REPEATS.value} steps after one; "
    f"{load()}\n"
  )
  print(
    "| backbone | parameters (M) | ours: SCHN step (s) | ours: backbone step (s) "
    "| torch: backbone step (s) | ours / torch (backbone) | peak RSS MiB (SCHN / ours / torch) |"
  )
  print("|---|---|---|---|---|---|---|")
  for backbone in _BACKBONES.value:
    results = {kind: run_child(kind, backbone) for kind in KINDS}
    cell = lambda r, key, fmt: fmt.format(r[key]) if key in r else r.get("error", "?")
    schn, ours, theirs = (results[k] for k in KINDS)
    ratio = (
      f"{ours['seconds'] / theirs['seconds']:.2f}"
      if "seconds" in ours and "seconds" in theirs
      else "?"
    )
    counts = {r["params"] for r in results.values() if "params" in r}
    params = ", ".join(f"{n / 1e6:.2f}" for n in sorted(counts)) or "?"  # one number: they agree
    print(
      f"| {backbone} | {params} "
      f"| {cell(schn, 'seconds', '{:.2f}')} | {cell(ours, 'seconds', '{:.2f}')} "
      f"| {cell(theirs, 'seconds', '{:.2f}')} | {ratio} "
      f"| {' / '.join(cell(r, 'peak_mib', '{:.0f}') for r in (schn, ours, theirs))} |",
      flush=True,
    )
  print(f"\n{load()}")


if __name__ == "__main__":
  app.run(main)
