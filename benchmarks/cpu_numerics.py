"""float32 error of XLA:CPU's kernels under each YNNPACK setting, on this CPU.

    python -m benchmarks.cpu_numerics
    python -m benchmarks.cpu_numerics --emulate=Haswell    # an AVX2-only CPU, under qemu-x86_64

For each setting of --xla_cpu_experimental_ynn_fusion_type (one process each) it
prints, for the project's own products at their own shapes
(schn_jax.xla_cpu.float32_errors), the float32 error against float64 as a ratio
to BLAS's float32 error on the same product: about 1 is as accurate as
numpy/torch, 3 is what moved float32 parity off on AVX2-only CPUs.
"""

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
  "jaxlib default, YNNPACK on (schn_jax with AVX-512)": "+dot",
  "all YNNPACK off (schn_jax without AVX-512)": "",
  "YNNPACK dots off": "-dot,-individual_dot",
  "YNNPACK convolutions off": "-individual_convolution",
}


def measure(value, prefix):
  env = dict(os.environ, XLA_FLAGS=f"--xla_cpu_experimental_ynn_fusion_type={value}")
  code = "import json; from schn_jax import xla_cpu; print(json.dumps(xla_cpu.float32_errors()))"
  out = subprocess.run(
    [*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
  for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
    if line.startswith("Model name"):
      return line.split(":", 1)[1].strip()
  return "unknown CPU"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--emulate", help="a qemu CPU model (qemu-x86_64 -cpu MODEL), e.g. Haswell")
  args = parser.parse_args()
  prefix = ["qemu-x86_64", "-cpu", args.emulate] if args.emulate else []
  if args.emulate:
    print(f"emulated by qemu-x86_64 -cpu {args.emulate} on:")
  # numpy reads CPUID, so an emulated CPU (qemu -cpu) reports its own instruction sets.
  code = "import numpy as np; f = np._core._multiarray_umath.__cpu_features__; print(f['AVX512F'], f['AVX2'])"
  features = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True)
  avx512, avx2 = features.stdout.split()[-2:]
  print(f"{cpu_name()}; AVX-512F: {avx512}, AVX2: {avx2}")
  results = {name: measure(value, prefix) for name, value in SETTINGS.items()}
  ops = list(next(iter(results.values())))
  print("| op | " + " | ".join(results) + " |")
  print("|---" * (len(results) + 1) + "|")
  for op in ops:
    cells = [f"{r[op][0]:.1e} ({r[op][0] / r[op][1]:.2f}x)" for r in results.values()]
    print(f"| {op} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
