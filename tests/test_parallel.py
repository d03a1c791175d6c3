"""Multi-device and multi-process training equal single-device training.

The device count is fixed when JAX starts, so every check runs in a fresh
subprocess: this file run as a script (`python tests/test_parallel.py VARIANT`)
is the 8-device worker, and the multi-process check launches train.py.

Steps run in training mode, dropout on: the backbone's dropout masks are keyed
by a row's index in the global batch (layers.RowDropout), so 8 devices draw the
same masks as one.

The 8-device step runs in float64. Sums reduced in another order round
differently; in float32 that residue is visible wherever a result is a
near-cancelling sum (the discriminator's bias gradients are sums of real and
fake terms of opposite sign) or Adam normalises a gradient whose true value is
~0 (the attention key bias), and it says nothing about the parallel mapping.
In float64 the two programs must agree to 1e-9.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import support

PYTHON = sys.executable

# float32 runs (several processes): the reference fixtures' step-delta rule, all but
# a 1e-4 fraction of parameter elements within 1e-6 after the step.
PARAM_ATOL, PARAM_OUTLIER_FRACTION = 1e-6, 1e-4
# float64 runs (the 8-device step): every element, relative to its array's scale.
FLOAT64_RELATIVE = 1e-9


def _env(devices, **extra):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(support.REPO),
    **extra,
  )
  return env


def _run(args, devices, timeout, cwd=support.REPO, **env):
  result = subprocess.run(
    [PYTHON, *args],
    cwd=cwd,
    env=_env(devices, **env),
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result.stdout


# ---------------------------------------------------------------- one step on 8 devices


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
def test_eight_devices_equal_one(variant):
  out = _run([__file__, variant], devices=8, timeout=240)
  assert "OK shard_map" in out, out


# The attention key bias: softmax ignores a shift shared by all keys, so its exact
# gradient is 0 and what any program computes for it is rounding noise, which Adam
# then scales up to a full +-lr step. Its gradient is compared with the scale of the
# whole tree (it must be ~0 there); its value after a step is not compared.
KEY_BIAS = "['k_proj']['bias']"


def _compare(name, ours, reference, skip_key_bias=False):
  """Leaf by leaf: max |ours - reference| / max |reference| <= FLOAT64_RELATIVE (the
  key bias: relative to the largest entry of the tree, or skipped)."""
  import jax

  flat_ref = jax.tree_util.tree_leaves_with_path(reference)
  flat_ours = jax.tree_util.tree_leaves(ours)
  assert len(flat_ref) == len(flat_ours), name
  tree_scale = max(float(np.abs(np.asarray(x)).max()) for _, x in flat_ref)
  for (path, ref), mine in zip(flat_ref, flat_ours):
    ref, mine = np.asarray(ref), np.asarray(mine)
    assert ref.dtype == mine.dtype and ref.dtype != np.float32, f"{name}: {ref.dtype}, {mine.dtype}"
    key_bias = KEY_BIAS in jax.tree_util.keystr(path)
    if key_bias and skip_key_bias:
      continue
    scale = tree_scale if key_bias else max(float(np.abs(ref).max()), 1e-300)
    error = np.abs(mine - ref).max() / scale
    assert error <= FLOAT64_RELATIVE, (
      f"{name}{jax.tree_util.keystr(path)}: relative error {error:.3g}"
    )


def _assert_params_close(mine, reference, name):
  """The fixtures' step-delta rule over all the given arrays together: all but a
  PARAM_OUTLIER_FRACTION of elements within PARAM_ATOL, none beyond 100x that.
  Sums reduced in another order (gloo's ring vs XLA's in-process all-reduce)
  round differently, and Adam scales the rounding residue of gradients whose
  true value is ~0 (the attention key bias's) up to a step's size."""
  error = np.concatenate(
    [
      np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
      for a, b in zip(mine, reference, strict=True)
    ]
  )
  outside = (error > PARAM_ATOL).mean()
  assert outside <= PARAM_OUTLIER_FRACTION, (
    f"{name}: {outside:.3g} of elements off by > {PARAM_ATOL}"
  )
  assert error.max() <= 100 * PARAM_ATOL, f"{name}: max error {error.max():.3g}"


def _worker(variant):
  """One step of `variant` on one device and on 8 devices (shard_map); asserts equality."""
  import jax

  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp

  from schn_jax import sharding
  from schn_jax.models import SCHN, Discriminator
  from schn_jax.training.dcc import update_rows
  from schn_jax.training.state import (
    create_state,
    make_optimizers,
  )
  from schn_jax.training.step import (
    StepConfig,
    make_step_functions,
  )

  assert jax.device_count() == 8, jax.devices()
  bits, classes, batch_size, database_size = 16, 10, 64, 200
  model, discriminator = SCHN(variant, bits, backbone="small_cnn"), Discriminator()
  init_key, disc_key, rng = jax.random.split(jax.random.key(0), 3)
  params = model.init(
    init_key, jnp.zeros((2, 28, 28, 1)), jnp.zeros((2, classes)), jnp.ones((2, 2))
  )["params"]
  disc_params = (
    discriminator.init(disc_key, jnp.zeros((2, bits)), jnp.zeros((2, bits)))["params"]
    if variant == "tomm"
    else {}
  )
  optimizers = make_optimizers(1e-5, "torch18", params["cycle"])
  data = np.random.default_rng(0)
  images = data.normal(size=(batch_size, 28, 28, 1))
  labels = (data.random((batch_size, classes)) < 0.3).astype(np.float64)
  labels[np.arange(batch_size), data.integers(0, classes, batch_size)] = 1
  rows = data.choice(database_size, batch_size, replace=False).astype(np.int32)
  database_codes = np.sign(data.normal(size=(database_size, bits)))
  state = create_state(params, disc_params, optimizers, database_size, bits, rng, jnp.float64)
  state = state.replace(database_codes=jnp.asarray(database_codes))
  step_config = StepConfig(
    variant, learning_rate=4e-5, gamma=10.0, lr_milestones=(130,), lr_decay_factor=5.0
  )

  def make_per_device(axis_name):
    cycle_update, adversarial_update, _ = make_step_functions(
      model, discriminator, optimizers, step_config, axis_name=axis_name
    )

    def per_device(state, images, labels, rows, rng):
      batch = {"images": images, "labels": labels, "database_codes": state.database_codes[rows]}
      state, outputs, metrics, grads = cycle_update(state, batch, rng)
      metrics, grads = dict(metrics), {"cycle": grads}
      if variant == "tomm":
        state, adversarial, probes = adversarial_update(state, batch, rng)
        metrics.update(adversarial)
        grads.update(D=probes["gradD"], G=probes["gradG"])
      codes = {k: outputs[k] for k in ("U_image", "U_label", "U_latent")}
      return state, codes, metrics, grads

    return per_device

  def dcc(database_codes, codes):
    # r = 0: the soft similarity is the plain +-1 one, enough to compare devices.
    hyper = {"alpha": np.float64(2), "beta": np.float64(0.1), "gamma": np.float64(10)}
    database_labels = np.zeros((database_size, classes))
    database_labels[rows] = labels
    return np.asarray(
      update_rows(database_codes, rows, database_labels, np.float64(0), codes, hyper)
    )

  single = jax.jit(make_per_device(None))(state, images, labels, rows, rng)
  single_codes = dcc(state.database_codes, single[1])

  mesh = sharding.make_mesh()
  kind = "shard_map"
  step = sharding.map_step(make_per_device(sharding.DATA_AXIS), mesh, num_rows=3)
  replicated = sharding.replicate(state, mesh)
  multi = step(
    replicated, *sharding.shard_rows(mesh, images, labels, rows), sharding.replicate(rng, mesh)
  )
  assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(multi[:3])), kind
  _compare(f"{kind} metrics", multi[2], single[2])
  for network in single[3]:
    _compare(f"{kind} grads[{network}]", multi[3][network], single[3][network])
  _compare(f"{kind} codes", multi[1], single[1])
  _compare(
    f"{kind} params",
    (multi[0].params, multi[0].disc_params),
    (single[0].params, single[0].disc_params),
    skip_key_bias=True,
  )
  multi_codes = dcc(multi[0].database_codes, {k: sharding.to_host(v) for k, v in multi[1].items()})
  np.testing.assert_array_equal(multi_codes, single_codes, err_msg=kind)
  assert np.any(multi_codes[rows] != database_codes[rows]), "DCC changed nothing: a vacuous check"
  print("OK", kind, flush=True)


# ---------------------------------------------------------------- the real loop on 8 devices


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
def test_real_loop_on_eight_devices_equals_one(variant):
  out = _run([__file__, "loop", variant], devices=8, timeout=600)
  assert "OK loop" in out, out


def _loop_worker(variant):
  """Three outer iterations of `training.loop.Iteration`, the program train.py runs
  (sampling, the scanned epochs and batches, DCC), in float64 over a 1-device mesh and
  over all 8 devices: per-step losses to FLOAT64_RELATIVE, codes identical."""
  import tempfile

  import jax

  jax.config.update("jax_enable_x64", True)
  from configs import tiny
  from schn_jax import data as data_lib
  from schn_jax import sharding
  from schn_jax.training import loop

  config = tiny.get_config()
  config.variant, config.dtype, config.max_iter = variant, "float64", 3
  config.sample_size, config.data.num_database = 128, 300
  bits = config.code_lengths[0]
  data = data_lib.build_dataset(config.data, tempfile.mkdtemp(), config.seed)
  runs = {}
  for devices in (1, 8):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    pieces, state = loop.build(
      config, bits, (28, 28, 1), data.source.num_classes, len(data.split.database)
    )
    iteration = loop.Iteration(config, data, pieces, mesh)
    state, losses = sharding.replicate(state, mesh), []
    for _ in range(config.max_iter):
      state, step_losses, _ = iteration(state)
      losses.append({k: np.asarray(v) for k, v in step_losses.items()})
    runs[devices] = (sharding.to_host(state.database_codes), losses, state)
  (codes_1, losses_1, state_1), (codes_8, losses_8, state_8) = runs[1], runs[8]
  np.testing.assert_array_equal(codes_8, codes_1)
  assert np.abs(codes_1).sum() > 0, "no codes learned: a vacuous check"
  _compare("losses", losses_8, losses_1)
  _compare(
    "params",
    (state_8.params, state_8.disc_params),
    (state_1.params, state_1.disc_params),
    skip_key_bias=True,
  )
  print("OK loop", variant, flush=True)


# ---------------------------------------------------------------- several processes

# Tiny and quick: 64 sampled points in batches of 32, two outer iterations.
TINY = [
  "--config=configs/tiny.py",
  "--config.variant=tomm",
  "--config.sample_size=64",
  "--config.data.num_database=300",
  "--config.data.query_per_class=4",
  "--config.eval.batch_size=128",
]


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, devices_per_process, timeout, extra=(), **env):
  port = _free_port()
  processes = [
    subprocess.Popen(
      [
        PYTHON,
        "train.py",
        *TINY,
        *extra,
        f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=support.REPO,
      env=_env(devices_per_process, **env),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  finally:
    # SIGKILL: the distributed runtime catches SIGTERM (preemption notice) and carries on.
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-5000:]


def _restore(checkpoint):
  """A checkpoint's state as {key path: NumPy array}, read onto this process's one device
  whatever topology wrote it."""
  import jax
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  path = checkpoint / "state"
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
    checkpointer.metadata(path).item_metadata,
  )
  state = checkpointer.restore(path, target)
  return {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)
  }


def test_two_processes_equal_one_and_resume(tmp_path):
  """2 processes x 2 devices == 1 process x 4 devices; the 2-process checkpoint resumes in 1 process."""
  multi, single, resumed = (
    tmp_path / "two_processes",
    tmp_path / "one_process",
    tmp_path / "resumed",
  )
  _train_two_processes(multi, devices_per_process=2, timeout=240)
  _run(["train.py", *TINY, f"--workdir={single}"], devices=4, timeout=180)
  # Resume the two-process run's iteration-1 checkpoint in one process.
  shutil.copytree(multi, resumed)
  shutil.rmtree(resumed / "bits_16" / "checkpoints" / "2")
  _run(["train.py", *TINY, f"--workdir={resumed}"], devices=4, timeout=180)

  reference = _restore(single / "bits_16" / "checkpoints" / "2")
  for run in (multi, resumed):
    state = _restore(run / "bits_16" / "checkpoints" / "2")
    assert state.keys() == reference.keys()
    floats = [k for k, v in reference.items() if v.dtype.kind == "f" and k != "['database_codes']"]
    _assert_params_close([state[k] for k in floats], [reference[k] for k in floats], run.name)
    for key in reference.keys() - set(floats):
      np.testing.assert_array_equal(state[key], reference[key], err_msg=f"{run.name} {key}")
    assert np.abs(state["['database_codes']"]).sum() > 0, "no codes learned: a vacuous check"
  # Files come from process 0 only, once.
  assert (multi / "metrics.json").exists() and (multi / "bits_16" / "codes.npz").exists()
  with (
    np.load(multi / "bits_16" / "codes.npz") as codes,
    np.load(single / "bits_16" / "codes.npz") as ref,
  ):
    np.testing.assert_array_equal(codes["database_codes"], ref["database_codes"])
    np.testing.assert_array_equal(codes["query_codes"], ref["query_codes"])


def test_two_processes_equal_one_in_float64(tmp_path):
  """train.py in float64: 2 processes of 1 device each (jax.distributed over gloo on
  127.0.0.1) end with the parameters of 1 process to FLOAT64_RELATIVE, and the same
  database and query codes and mAP history."""
  extra = ["--config.dtype=float64", "--config.max_iter=2"]
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  _train_two_processes(multi, 1, 300, extra, JAX_ENABLE_X64="1")
  _run(["train.py", *TINY, *extra, f"--workdir={single}"], 1, 240, JAX_ENABLE_X64="1")
  import jax

  with jax.enable_x64(True):  # else JAX reads the float64 arrays back as float32
    reference, state = (_restore(run / "bits_16" / "checkpoints" / "2") for run in (single, multi))
  assert state.keys() == reference.keys()
  floats = sorted(k for k, v in reference.items() if v.dtype.kind == "f")
  assert all(reference[k].dtype == np.float64 for k in floats), "not a float64 run"
  _compare("state", {k: state[k] for k in floats}, {k: reference[k] for k in floats}, True)
  for key in reference.keys() - set(floats):
    np.testing.assert_array_equal(state[key], reference[key], err_msg=key)
  with (
    np.load(multi / "bits_16" / "codes.npz") as codes,
    np.load(single / "bits_16" / "codes.npz") as ref,
  ):
    for key in ("database_codes", "query_codes"):
      np.testing.assert_array_equal(codes[key], ref[key], err_msg=key)
    assert np.abs(ref["database_codes"]).sum() > 0, "no codes learned: a vacuous check"
  history = [json.loads((run / "metrics.json").read_text()) for run in (multi, single)]
  assert history[0]["16"]["history"] == history[1]["16"]["history"]


if __name__ == "__main__":
  if sys.argv[1] == "loop":
    _loop_worker(sys.argv[2])
  else:
    _worker(sys.argv[1])
