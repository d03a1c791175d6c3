"""The README's results table: the Fashion-MNIST default over several seeds, both variants.

    python -m benchmarks.fashion_mnist_seeds --seeds=3 --workdir=runs/seeds

Runs `train.py --config=configs/fashion_mnist.py` (32 bits) once per variant and
seed (config.seed: the split, the initial weights and the sampling), each in
its own workdir (a finished one is read back, not trained again), and prints a
markdown table: mAP after each pass over the database and at the end, as mean
+- standard deviation (n - 1) with min-max, and the train time (`train_seconds`),
with the CPU model. Extra `--config.key=value` arguments go to every run.
"""

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
BITS = 32


def cpu_name():
  for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
    if line.startswith("Model name"):
      return line.split(":", 1)[1].strip()
  return "unknown CPU"


def run(variant, seed, workdir, extra):
  metrics = workdir / "metrics.json"
  if not metrics.exists():
    subprocess.run(
      [
        sys.executable,
        "train.py",
        "--config=configs/fashion_mnist.py",
        f"--workdir={workdir}",
        f"--config.code_lengths=({BITS},)",
        f"--config.variant={variant}",
        f"--config.seed={seed}",
        *extra,
      ],
      cwd=REPO,
      check=True,
    )
  return json.loads(metrics.read_text())[str(BITS)]


def spread(values, digits=3):
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.{digits}f} +- {std:.{digits}f} ({values.min():.{digits}f}-{values.max():.{digits}f})"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--first_seed", type=int, default=0)
  parser.add_argument("--variants", default="mmasia,tomm")
  parser.add_argument("--workdir", default="runs/seeds")
  args, extra = parser.parse_known_args()
  seeds = range(args.first_seed, args.first_seed + args.seeds)
  root = pathlib.Path(args.workdir).resolve()
  variants = args.variants.split(",")
  results = {variant: [] for variant in variants}
  for seed in seeds:  # seed by seed, so that a stopped run leaves every variant some seeds
    for variant in variants:
      results[variant].append(run(variant, seed, root / f"{variant}_seed{seed}", extra))
  passes = len(results[next(iter(results))][0]["history"])
  print(f"\nFashion-MNIST, {BITS} bits, seeds {list(seeds)}, on {cpu_name()}:\n")
  header = [f"pass {i + 1}" for i in range(passes)]
  print("| variant | " + " | ".join(header) + " | final mAP | train time (s) |")
  print("|---" * (len(header) + 3) + "|")
  for variant, runs in results.items():
    cells = [spread([r["history"][i]["map"] for r in runs]) for i in range(passes)]
    cells.append(spread([r["map"] for r in runs]))
    cells.append(spread([r["train_seconds"] for r in runs], digits=0))
    print(f"| {variant} | " + " | ".join(cells) + " |")
  for variant, runs in results.items():
    print(f"{variant} per seed: " + ", ".join(f"{r['map']:.4f}" for r in runs))


if __name__ == "__main__":
  main()
