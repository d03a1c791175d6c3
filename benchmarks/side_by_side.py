"""The reference's training loop beside ours, trained alike: final mAP over seeds and images/s.

    python -m benchmarks.side_by_side --reference=PATH              # 3 seeds, mmasia, 16 bits
    python -m benchmarks.side_by_side --reference=PATH --seeds=5 --variant=tomm --max_iter=8

PATH is a checkout of JalinWang/SCHN at the fixtures' commit (as for
`python -m schn_jax.parity.capture`). For each seed s (config.seed = --first_seed + s)
both implementations train on the same Fashion-MNIST split with the same schedule:
configs/fashion_mnist.py (small CNN, grey 28x28, learning rate 1e-3) with the
reference's loop instead of that config's departures from it - sampling "uniform",
database_init "zeros", no cycle_lr_decay milestones - and the short schedule of the
flags (a few thousand database images, a handful of outer iterations, one evaluation
at the end), dropout and augmentation off, float32. Both draw every iteration's sample
and batch order with `training.loop.plan_iteration`, so they see the same batches.
- reference: its own train() (main_mmasia.py / main_tomm.py) through the capture's
  machinery, with the capture's swaps (parity/capture.py) except the weights: the
  networks' own torch initialization after torch.manual_seed(seed), not the recipe;
- ours: train.py's loop (`training.train.train_and_evaluate`), our model's own
  initialization (torch's distributions) from config.seed.
So each run starts from its own random weights; Welch's t-test
(scipy.stats.ttest_ind(equal_var=False)) asks whether the two implementations' mean
final mAPs differ beyond the spread between seeds. Final mAP: mAP@all after the last
iteration of the learned database codes, ties broken by index (the reference's codes
scored by the capture's NumPy mAP; its own torch mAP, which breaks ties by torch's
argsort and drops the last item, is printed beside it).

Images/s: images trained (iterations x epochs x sample) per second of training,
evaluation excluded. Ours is given with and without its first iteration, which
compiles the loop (the per-iteration times train.py writes to TensorBoard). The
reference's loaders are swapped for in-memory tensors, so its figure leaves out the PIL
decoding and transforms its own DataLoader would do per image. Wall-clock: run it on a
quiet machine.
"""

import contextlib
import io
import logging
import pathlib
import subprocess
import tempfile

import numpy as np
import scipy.stats
from absl import flags
from tensorboard.backend.event_processing import event_accumulator

from configs import fashion_mnist
from schn_jax import errors
from schn_jax.parity import capture
from schn_jax.training.train import train_and_evaluate

_REFERENCE = flags.DEFINE_string(
  "reference", None, "A checkout of JalinWang/SCHN at the fixtures' commit."
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds (runs of each implementation).")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "config.seed of the first run.")
_VARIANT = flags.DEFINE_enum("variant", "mmasia", ["mmasia", "tomm"], "SCHN variant.")
_BITS = flags.DEFINE_integer("bits", 16, "Code length.")
_DATABASE = flags.DEFINE_integer("num_database", 3000, "Database images (the training pool).")
_QUERIES = flags.DEFINE_integer("query_per_class", 50, "Query images per class (10 classes).")
_SAMPLE = flags.DEFINE_integer("sample_size", 1000, "Images sampled per outer iteration.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_EPOCHS = flags.DEFINE_integer("max_epoch", 1, "Epochs over the sample per outer iteration.")
_ITERATIONS = flags.DEFINE_integer("max_iter", 6, "Outer iterations.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "All optimizers' learning rate.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where our runs go (default: a temporary folder).")
_TORCH_THREADS = flags.DEFINE_integer(
  "torch_threads",
  1,
  "torch's intra-op threads for the reference (0: torch's default). Beside JAX's thread "
  "pool on a busy 2-core machine, 2 of torch's spinning OpenMP threads ran its loop about "
  "20 times slower than 1 (parity/capture.py, `capture`).",
)
flags.mark_flag_as_required("reference")


def benchmark_config(seed):
  """configs/fashion_mnist.py with the reference's loop and the flags' schedule."""
  config = fashion_mnist.get_config()
  config.seed = seed
  config.variant = _VARIANT.value
  config.code_lengths = (_BITS.value,)
  config.sampling = "uniform"
  config.database_init = "zeros"
  config.cycle_lr_decay.milestones = ()
  config.data.num_database = _DATABASE.value
  config.data.query_per_class = _QUERIES.value
  config.sample_size = _SAMPLE.value
  config.batch_size = _BATCH.value
  config.max_epoch = _EPOCHS.value
  config.max_iter = _ITERATIONS.value
  config.eval_iter = _ITERATIONS.value
  config.learning_rate = _LR.value
  config.eval.ties = "stable"
  return capture.capture_config(config)  # dropout and augmentation off, float32


def speeds(config, iteration_seconds):
  """Images/s over all iterations, and over all but the first (which compiles ours, and
  warms torch up)."""
  images = config.max_epoch * config.sample_size
  seconds = np.asarray(iteration_seconds)
  after_first = images * (len(seconds) - 1) / seconds[1:].sum() if len(seconds) > 1 else np.nan
  return {
    "images_per_second": images * len(seconds) / seconds.sum(),
    "images_per_second_after_first": after_first,
  }


def run_reference(root, config):
  data = capture.load_capture_data(config, config.max_iter)
  run = capture.run_reference(root, config, data, "float32", weights="torch", seed=config.seed)
  arrays = run["arrays"]
  return {
    "map": float(arrays["eval_map_stable"][-1]),
    "torch_map": float(arrays["eval_map_reference"][-1]),
    **speeds(config, run["iteration_seconds"]),
  }


def run_ours(config, workdir):
  if workdir.exists():
    raise errors.UserError(f"{workdir} exists: a run there would resume; use a new --workdir")
  bits = config.code_lengths[0]
  # train.py's progress bar and metric lines would interleave with the table.
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    summary = train_and_evaluate(config, workdir)[str(bits)]
  accumulator = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  accumulator.Reload()
  seconds = [e.value for e in accumulator.Scalars(f"bits_{bits}/train/iteration_seconds")]
  return {"map": float(summary["map"]), **speeds(config, seconds)}


def describe(values):
  values = np.asarray(values)
  std = values.std(ddof=1) if len(values) > 1 else float("nan")
  return f"{values.mean():.4f} +- {std:.4f} (min {values.min():.4f}, max {values.max():.4f})"


def cpu_model():
  lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
  return next((line.split(":", 1)[1].strip() for line in lines if "Model name" in line), "?")


def main(argv):
  del argv
  for name in ("absl", "jax", "tensorboardX"):
    logging.getLogger(name).setLevel(logging.WARNING)
  root = capture.check_reference(_REFERENCE.value)
  torch = capture.import_torch()
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  base = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="side_by_side_"))
  config = benchmark_config(_FIRST_SEED.value)
  capture.capturable(config, config.max_iter)
  print(
    f"{config.variant}, {_BITS.value} bits, Fashion-MNIST: {_DATABASE.value} database images, "
    f"{10 * _QUERIES.value} queries, {config.max_iter} iterations x {config.max_epoch} "
    f"epoch(s) x {config.sample_size} samples, batch {config.batch_size}, lr "
    f"{config.learning_rate}, uniform sampling, zero initial codes, float32; CPU: "
    f"{cpu_model()}, torch threads {torch.get_num_threads()}"
  )
  print(
    f"{'seed':>4}  {'reference mAP':>13}  {'(torch mAP)':>11}  {'ours mAP':>8}  "
    "images/s reference, ours (after the 1st iteration: reference, ours)"
  )
  reference, ours = [], []
  for s in range(_SEEDS.value):
    config = benchmark_config(_FIRST_SEED.value + s)
    reference.append(run_reference(root, config))
    ours.append(run_ours(config, base / f"seed_{config.seed}"))
    r, o = reference[-1], ours[-1]
    print(
      f"{config.seed:>4}  {r['map']:>13.4f}  {r['torch_map']:>11.4f}  {o['map']:>8.4f}  "
      f"{r['images_per_second']:.0f}, {o['images_per_second']:.0f} "
      f"({r['images_per_second_after_first']:.0f}, {o['images_per_second_after_first']:.0f})",
      flush=True,
    )
  reference_maps, our_maps = [r["map"] for r in reference], [o["map"] for o in ours]
  print(f"final mAP, reference: {describe(reference_maps)}")
  print(f"final mAP, ours:      {describe(our_maps)}")
  if len(reference) > 1:
    test = scipy.stats.ttest_ind(our_maps, reference_maps, equal_var=False)
    print(f"Welch's t (ours - reference) = {test.statistic:.3f}, p = {test.pvalue:.3f}")
  for key, what in (
    ("images_per_second", "all iterations"),
    ("images_per_second_after_first", "after the first iteration"),
  ):
    theirs, mine = (np.mean([run[key] for run in runs]) for runs in (reference, ours))
    print(
      f"images/s, {what} (mean over seeds): reference {theirs:.0f}, ours {mine:.0f} "
      f"(ours / reference {mine / theirs:.2f})"
    )
  print(f"our runs: {base}")


if __name__ == "__main__":
  errors.run(main)
