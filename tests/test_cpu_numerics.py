"""float32 accuracy of XLA:CPU's kernels for the project's own products (schn_jax/xla_cpu.py).

These hold on any x86-64 CPU because they compare against BLAS's float32 error on
the same product on the same CPU, not against a fixed number: a kernel that rounds
as finely as numpy's (and torch's) passes whatever the instruction set. On an
AVX2-only CPU with this jaxlib's YNNPACK dots, the dots came out 2.6-4.5x worse
(docs/performance.md), which this test catches.
"""

import os
import subprocess
import sys

import jax
import jaxlib.version
import pytest

from schn_jax import xla_cpu

# A kernel may round up to this much worse than BLAS: measured ratios with accurate
# kernels were 0.5-1.5 on AVX-512 and AVX2 CPUs, YNNPACK's dots 2.6-4.5 on AVX2.
WORSE_THAN_BLAS = 2.0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernels only")
def test_float32_kernels_round_as_finely_as_blas():
  errors = xla_cpu.float32_errors()
  assert set(errors) >= set(xla_cpu.DOTS) | set(xla_cpu.CONVOLUTIONS)
  worse = {op: ours / blas for op, (ours, blas) in errors.items() if ours > WORSE_THAN_BLAS * blas}
  assert not worse, f"float32 kernels less accurate than BLAS on this CPU: {worse}"


def _flags_after_import(xla_flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  code = "import os, schn_jax; print(os.environ.get('XLA_FLAGS', ''))"
  return subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  ).stdout.strip()


def test_import_sets_the_flag_this_cpu_needs():
  base = "--xla_force_host_platform_device_count=2"
  flags = _flags_after_import(base)
  needed = xla_cpu.accurate_flag()
  if needed is None or jaxlib.version.__version__ not in xla_cpu.KNOWN_JAXLIB:
    assert flags == base
  else:
    assert flags == f"{base} {needed}"


def test_cpus_without_avx512_get_every_ynnpack_fusion_off(monkeypatch):
  monkeypatch.setattr(xla_cpu, "has_avx512", lambda: False)
  assert xla_cpu.accurate_flag() == "--xla_cpu_experimental_ynn_fusion_type="
  monkeypatch.setattr(xla_cpu, "has_avx512", lambda: True)
  assert xla_cpu.accurate_flag() is None


def test_users_own_setting_wins():
  mine = f"{xla_cpu.YNN_FLAG}=+dot"
  assert _flags_after_import(mine) == mine
