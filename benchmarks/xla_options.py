r"""XLA:CPU's options for the AlexNet-224 forward+backward, against torch, on this machine.

  python -m benchmarks.xla_options [--options_batch=64] [--reps=3] [--only=NAME,...]

The AlexNet forward+backward alone, JAX against torch, under
XLA:CPU's options (which library runs the convolutions and dots, fast math,
threads, vector width, simulated devices) and under rewrites of the same
math (NCHW layout, im2col, the batch in row chunks). Each XLA_FLAGS setting
runs in a fresh process (XLA reads the flags once); every process times
torch in turns with JAX, so each option is reported as JAX/torch and as
that ratio over the default's, which cancels most of the drift of a shared
machine. Rewrites are timed in one process, against VisualNet in the same
process. docs/performance.md holds the results and what they mean.

The machine is shared and absolute times drift: compare the ratios measured
in one run. The load average is printed at the start and the end.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from jax import lax
from torch import nn

from schn_jax import sharding
from schn_jax.data import pipeline
from schn_jax.models import visual
from schn_jax.models.layers import RowDropout

BITS, BATCH, SIZE, NUM_CLASSES = 32, 64, 224, 10
DATABASE_SIZE = 59_000  # CIFAR-10's database; only the codes' gather depends on it
TARGET = 0.7


def load():
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def timed(call, steps):
  """(seconds of the first call, median seconds of the next `steps` calls)."""
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def synthetic_batch(seed=0, batch=BATCH):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
  labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)]
  rows = rng.choice(DATABASE_SIZE, batch, replace=False)
  return images, labels, rows


# ---------------------------------------------------------------- the SCHN step


# ---------------------------------------------------------------- AlexNet forward+backward


def torch_alexnet():
  """torchvision's AlexNet up to fc7 (ReLU), then a tanh hash layer."""
  alexnet = torchvision.models.alexnet()
  return nn.Sequential(
    alexnet.features,
    alexnet.avgpool,
    nn.Flatten(),
    *alexnet.classifier[:6],
    nn.Linear(4096, BITS),
    nn.Tanh(),
  )


def pair_loss(codes, labels, xp):
  """Code inner products against label similarity: simple, touches every output."""
  similarity = (labels @ labels.T > 0) * 2.0 - 1.0
  return xp.mean((codes @ codes.T / BITS - similarity) ** 2)


def usable_cpus():
  # os.cpu_count() ignores `taskset`: give torch the cores this process may use.
  return len(os.sched_getaffinity(0))


def make_torch_step(batch=BATCH):
  """A torch forward+backward callable, timed beside each of our measurements so
  that every ratio compares times taken under the same load."""
  torch.set_num_threads(usable_cpus())
  torch.manual_seed(0)
  net = torch_alexnet().train()
  images, labels, _ = synthetic_batch(batch=batch)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
  labels = torch.from_numpy(labels)

  def step():
    net.zero_grad(set_to_none=True)
    pair_loss(net(images), labels, torch).backward()

  return step


# VisualNet's AlexNet written out with lax over VisualNet's own parameters, so
# that one thing at a time can change: the convolution's layout or algorithm,
# or which part of the network runs over row chunks of the batch.
CONV_LAYERS = [
  ("features_0", 4, 2, True),
  ("features_3", 1, 2, True),
  ("features_6", 1, 1, False),
  ("features_8", 1, 1, False),
  ("features_10", 1, 1, True),
]


def conv_nhwc(x, kernel, stride, padding):
  """What nn.Conv runs."""
  return lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    [(padding, padding)] * 2,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def conv_im2col(x, kernel, stride, padding):
  """NHWC convolution as one matmul: (pixels, k*k*C) patches @ the (k*k*C, F) kernel."""
  size = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  height, width = ((n - size) // stride + 1 for n in x.shape[1:3])
  patches = [
    x[:, i : i + stride * (height - 1) + 1 : stride, j : j + stride * (width - 1) + 1 : stride]
    for i in range(size)
    for j in range(size)
  ]
  return jnp.concatenate(patches, axis=-1) @ kernel.reshape(-1, kernel.shape[-1])


def features_nhwc(backbone, images, conv=conv_nhwc):
  """(B, 224, 224, 3) -> flattened pool5 features (B, 9216), as VisualNet computes them."""
  x = images
  for name, stride, padding, pool in CONV_LAYERS:
    x = jax.nn.relu(conv(x, backbone[name]["kernel"], stride, padding) + backbone[name]["bias"])
    if pool:
      x = visual.max_pool(x, 3, 2)
  pooled = visual.adaptive_avg_pool(x, 6)
  return visual.flatten_like_torch(pooled)


def features_nchw(backbone, images):
  """The same in torch's layout: NCHW activations, OIHW kernels."""
  x = jnp.transpose(images, (0, 3, 1, 2))
  for name, stride, padding, pool in CONV_LAYERS:
    kernel = jnp.transpose(backbone[name]["kernel"], (3, 2, 0, 1))
    x = lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      [(padding, padding)] * 2,
      dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    x = jax.nn.relu(x + backbone[name]["bias"][:, None, None])
    if pool:
      size = (x.shape[2] - 3) // 2 + 1
      x = functools.reduce(
        jnp.maximum,
        [
          x[:, :, i : i + 2 * size - 1 : 2, j : j + 2 * size - 1 : 2]
          for i in range(3)
          for j in range(3)
        ],
      )
  bins = np.zeros((6, x.shape[2]), np.float32)  # adaptive_avg_pool's bins (13 -> 6)
  for i in range(6):
    low, high = (i * x.shape[2]) // 6, -((-(i + 1) * x.shape[2]) // 6)
    bins[i, low:high] = 1.0 / (high - low)
  return jnp.einsum("ih,jw,bchw->bcij", bins, bins, x).reshape(x.shape[0], -1)


def head(params, features, key, first_row):
  """fc6, fc7 (dropout before each, as RowDropout draws it) and the tanh hash layer."""
  backbone = params["backbone"]
  for name in ("classifier_1", "classifier_4"):
    if key is not None:
      features = RowDropout(0.5).apply({}, features, True, first_row, rngs={"dropout": key})
    features = jax.nn.relu(features @ backbone[name]["kernel"] + backbone[name]["bias"])
  return jnp.tanh(features @ params["hash"]["linear"]["kernel"] + params["hash"]["linear"]["bias"])


def in_chunks(function, chunk, *arrays, loop=False):
  """function(first row, *row chunks of arrays) over consecutive row chunks, concatenated.

  Unrolled: each chunk's convolutions are separate ops that XLA:CPU hands to its
  libraries. loop=True runs them in lax.map instead, whose while loop XLA:CPU
  compiles to its own element-by-element convolution kernels.
  """
  count = arrays[0].shape[0] // chunk
  if loop:
    chunks = [a.reshape(count, chunk, *a.shape[1:]) for a in arrays]
    out = lax.map(lambda xs: function(xs[0] * chunk, *xs[1:]), (jnp.arange(count), *chunks))
    return out.reshape(count * chunk, *out.shape[2:])
  return jnp.concatenate(
    [function(i * chunk, *(a[i * chunk : (i + 1) * chunk] for a in arrays)) for i in range(count)]
  )


def alexnet_programs(names, batch):
  """{name: codes(params, images, key)} for the programs named; `key`=None: no dropout."""
  net = visual.VisualNet(BITS, "alexnet")

  def visualnet(params, images, key, first_row=0):
    train = key is not None
    _, codes = net.apply(
      {"params": params}, images, train, first_row, rngs={"dropout": key} if train else {}
    )
    return codes

  def lax_net(features):
    return lambda params, images, key: head(params, features(params["backbone"], images), key, 0)

  def convs_in_chunks(chunk, loop=False):
    def codes(params, images, key):
      features = in_chunks(
        lambda _, x: features_nhwc(params["backbone"], x), chunk, images, loop=loop
      )
      return head(params, features, key, 0)

    return codes

  def all_in_chunks(chunk):
    return lambda params, images, key: in_chunks(
      lambda first, x: visualnet(params, x, key, first), chunk, images
    )

  programs = {
    "VisualNet": visualnet,
    "lax NHWC (as VisualNet)": lax_net(features_nhwc),
    "lax NCHW": lax_net(features_nchw),
    "lax im2col + matmul": lax_net(lambda b, x: features_nhwc(b, x, conv_im2col)),
  }
  for chunk in (8, 16, 32):
    if chunk < batch and batch % chunk == 0:
      programs[f"convs in row chunks of {chunk}"] = convs_in_chunks(chunk)
      programs[f"convs in row chunks of {chunk} (lax.map)"] = convs_in_chunks(chunk, loop=True)
      programs[f"VisualNet in row chunks of {chunk}"] = all_in_chunks(chunk)
  return {name: programs[name] for name in names if name in programs}


def alexnet_inputs(batch):
  images, labels, _ = synthetic_batch(batch=batch)
  images = pipeline.normalize(images)
  params = visual.VisualNet(BITS, "alexnet").init(jax.random.PRNGKey(0), images[:2])["params"]
  return params, images, jnp.asarray(labels), jax.random.PRNGKey(1)


def jitted_grads(codes_fn):
  @jax.jit
  def grads(params, images, labels, key):
    return jax.grad(lambda p: pair_loss(codes_fn(p, images, key), labels, jnp))(params)

  return grads


def gradient_errors(calls_without_dropout):
  """Max |difference| / max |value| over the gradients of each program from VisualNet's,
  dropout off (the lax programs draw other masks than VisualNet's), in float32."""
  reference = jax.tree.leaves(calls_without_dropout["VisualNet"]())
  return {
    name: max(
      float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
      for g, r in zip(jax.tree.leaves(call()), reference)
    )
    for name, call in calls_without_dropout.items()
  }


def time_in_turns(names, batch, reps, with_torch=True, check=False):
  """Forward+backward (jitted grads) of each program named, `reps` turns of one call each,
  a turn timing torch first when `with_torch`: {'torch': [s per turn], name: {'first': s of
  compilation plus one call, 'jax': [s per turn], 'cores': [the process's CPU seconds per
  second of the turn]}}, and 'errors': gradient_errors when `check`. A program's
  turn-by-turn ratio to another (or to torch) compares calls a few seconds apart, under
  nearly the same load."""
  params, images, labels, key = alexnet_inputs(batch)
  if jax.device_count() > 1:  # --xla_force_host_platform_device_count: split the images
    images = sharding.shard_rows(sharding.make_mesh(), images)[0]
  programs = alexnet_programs(names, batch)
  result = {"torch": []}
  if check:
    result["errors"] = gradient_errors(
      {
        name: functools.partial(jitted_grads(codes_fn), params, images, labels, None)
        for name, codes_fn in programs.items()
      }
    )
  calls = {
    name: functools.partial(jitted_grads(codes_fn), params, images, labels, key)
    for name, codes_fn in programs.items()
  }
  for name, call in calls.items():
    start = time.perf_counter()
    jax.block_until_ready(call())
    result[name] = {"first": time.perf_counter() - start, "jax": [], "cores": []}
  torch_step = make_torch_step(batch) if with_torch else None
  if torch_step:
    torch_step()
  for _ in range(reps):
    if torch_step:
      start = time.perf_counter()
      torch_step()
      result["torch"].append(time.perf_counter() - start)
    for name, call in calls.items():
      start, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(call())
      result[name]["jax"].append(time.perf_counter() - start)
      result[name]["cores"].append((time.process_time() - cpu) / result[name]["jax"][-1])
  return result


# (name, in channels, out channels, kernel, input height and width) of VisualNet's convolutions.
CONV_SHAPES = [
  ("conv1", 3, 64, 11, 224),
  ("conv2", 64, 192, 5, 27),
  ("conv3", 192, 384, 3, 13),
  ("conv4", 384, 256, 3, 13),
  ("conv5", 256, 256, 3, 13),
]


def time_layers(batch, reps):
  """Each convolution alone, its forward, input gradient and kernel gradient, in JAX
  (jitted, as VisualNet's backward computes them) and in torch (conv2d and aten's
  convolution_backward for one gradient at a time), in turns: {layer: {call: [(seconds,
  CPU seconds of the process)]}}."""
  rng = np.random.default_rng(0)
  torch.set_num_threads(usable_cpus())
  calls = {}
  for (_, stride, padding, _), (name, cin, cout, size, height) in zip(CONV_LAYERS, CONV_SHAPES):
    x = rng.standard_normal((batch, height, height, cin), np.float32)
    kernel = rng.standard_normal((size, size, cin, cout)).astype(np.float32) / np.float32(
      size * np.sqrt(cin)
    )
    conv = functools.partial(conv_nhwc, stride=stride, padding=padding)
    forward = jax.jit(conv)
    grad_out = np.ones(forward(x, kernel).shape, np.float32)
    dx = jax.jit(lambda x, k, g, conv=conv: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])
    dk = jax.jit(lambda x, k, g, conv=conv: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    kt = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
    gt = torch.from_numpy(grad_out).permute(0, 3, 1, 2).contiguous()

    def torch_backward(mask, xt=xt, kt=kt, gt=gt, stride=stride, padding=padding):
      torch.ops.aten.convolution_backward(
        gt, xt, kt, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, mask
      )

    calls[name] = {
      "JAX forward": lambda f=forward, x=x, k=kernel: f(x, k).block_until_ready(),
      "JAX input grad": lambda f=dx, x=x, k=kernel, g=grad_out: f(x, k, g).block_until_ready(),
      "JAX kernel grad": lambda f=dk, x=x, k=kernel, g=grad_out: f(x, k, g).block_until_ready(),
      "torch forward": lambda xt=xt, kt=kt, s=stride, p=padding: torch.nn.functional.conv2d(
        xt, kt, None, s, p
      ),
      "torch input grad": functools.partial(torch_backward, [True, False, False]),
      "torch kernel grad": functools.partial(torch_backward, [False, True, False]),
    }
  times = {layer: {call: [] for call in layer_calls} for layer, layer_calls in calls.items()}
  with torch.no_grad():
    for turn in range(reps + 1):  # turn 0 compiles and warms up, untimed
      for layer, layer_calls in calls.items():
        for call_name, call in layer_calls.items():
          start, cpu = time.perf_counter(), time.process_time()
          call()
          if turn:
            times[layer][call_name].append((time.perf_counter() - start, time.process_time() - cpu))
  return times


def median_ratio(numerators, denominators):
  return statistics.median(n / d for n, d in zip(numerators, denominators))


# ---------------------------------------------------------------- XLA:CPU options

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
# (name, XLA_FLAGS, command prefix). The flags are this jaxlib's own (XLA_FLAGS=--help
# lists them); docs/performance.md says which of them change the compiled program.
XLA_OPTIONS = [
  ("default (YNNPACK convs and dots)", "", []),
  ("YNNPACK off: Eigen convs and dots", YNN_OFF, []),
  ("Eigen convs + YNNPACK dots", YNN_OFF + "-individual_convolution", []),
  (
    "Eigen convs + oneDNN dot fusions",
    YNN_OFF + " --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    [],
  ),
  ("fast math", "--xla_cpu_enable_fast_math=true", []),
  ("Eigen single-threaded", "--xla_cpu_multi_thread_eigen=false", []),
  ("512-bit vectors", "--xla_cpu_prefer_vector_width=512", []),
  ("2 host devices (batch split)", "--xla_force_host_platform_device_count=2", []),
  ("one core for JAX and torch", "", ["taskset", "-c", "CPU"]),  # this process's first core
]
REWRITES = [
  "VisualNet",
  "lax NHWC (as VisualNet)",
  "lax NCHW",
  "lax im2col + matmul",
  "convs in row chunks of 8",
  "convs in row chunks of 16",
  "convs in row chunks of 32",
  "VisualNet in row chunks of 8",
  "VisualNet in row chunks of 16",
  "VisualNet in row chunks of 32",
]


def run_child(spec, flags="", prefix=()):
  """time_in_turns(**spec) in a fresh process, with `flags` added to XLA_FLAGS; the last
  line of the child's stderr (a str) if it fails."""
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
  command = [*prefix, sys.executable, "-m", "benchmarks.train_step", "--child", json.dumps(spec)]
  done = subprocess.run(
    command,
    env=env,
    capture_output=True,
    text=True,
    check=False,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT ") :])
  return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]


def print_layers(result):
  """time_layers' result as a table: ms, and the JAX calls' CPU seconds per second."""
  print(
    f"  {'layer':6s} {'JAX fwd':>8s} {'in grad':>8s} {'k grad':>8s} {'cores':>6s} "
    f"{'torch fwd':>10s} {'in grad':>8s} {'k grad':>8s} {'JAX/torch':>9s}"
  )
  totals = np.zeros(7)
  for layer, calls in result.items():
    ms = [1000 * statistics.median(t for t, _ in turns) for turns in calls.values()]
    jax_turns = [turn for call, turns in calls.items() if call.startswith("JAX") for turn in turns]
    cores = sum(c for _, c in jax_turns) / sum(t for t, _ in jax_turns)
    row = np.array(ms[:3] + [cores] + ms[3:])
    totals += np.where(np.arange(7) == 3, 0, row)
    print(
      f"  {layer:6s} {row[0]:8.0f} {row[1]:8.0f} {row[2]:8.0f} {row[3]:6.1f} {row[4]:10.0f} "
      f"{row[5]:8.0f} {row[6]:8.0f} {row[:3].sum() / row[4:].sum():9.2f}"
    )
  print(
    f"  {'total':6s} {totals[0]:8.0f} {totals[1]:8.0f} {totals[2]:8.0f} {'':6s} "
    f"{totals[4]:10.0f} {totals[5]:8.0f} {totals[6]:8.0f} "
    f"{totals[:3].sum() / totals[4:].sum():9.2f}",
    flush=True,
  )


def xla_options(args):
  only = set(args.only.split(",")) if args.only else None
  batch, reps = args.options_batch, args.reps
  cpus = usable_cpus()
  print(
    f"{cpus} usable CPUs, JAX {jax.__version__}, torch {torch.__version__} ({cpus} threads); "
    f"AlexNet {SIZE}x{SIZE} forward+backward (VisualNet, 32-bit hash, pair loss), "
    f"batch {batch}; 'cores': the process's CPU seconds per second of JAX's calls"
  )
  print(f"start: {load()}", flush=True)

  rewrites = [name for name in REWRITES if only is None or name in only]
  if rewrites:
    r = run_child({"names": rewrites, "batch": batch, "reps": reps, "check": True})
    if isinstance(r, str):
      raise RuntimeError(r)
    base = r["VisualNet"]["jax"]
    print(
      f"\nrewrites of the same math, one process, default flags, {reps} turns; 'vs "
      "VisualNet' = median over turns of the program's time / VisualNet's"
    )
    print(
      f"{'program':34s} {'grad err':>8s} {'first s':>8s} {'JAX s':>7s} {'cores':>6s} "
      f"{'JAX/torch':>9s} {'vs VisualNet':>12s}"
    )
    for name in (name for name in rewrites if name in r):
      t = r[name]["jax"]
      print(
        f"{name:34s} {r['errors'][name]:8.0e} {r[name]['first']:8.1f} "
        f"{statistics.median(t):7.3f} {statistics.median(r[name]['cores']):6.1f} "
        f"{median_ratio(t, r['torch']):9.2f} {median_ratio(t, base):12.2f}"
      )
    print(f"  torch: {statistics.median(r['torch']):.3f} s ({load()})", flush=True)

  first_cpu = str(min(os.sched_getaffinity(0)))
  options = [
    (name, flags, [first_cpu if p == "CPU" else p for p in prefix])
    for name, flags, prefix in XLA_OPTIONS[1:]
    if (only is None or name in only) and (cpus > 1 or not prefix)
  ]
  if options:
    # Rounds: the default, then every option, each in its own process; an option's
    # ratio in a round divides its median by that round's default's.
    runs = {name: [] for name, _, _ in [XLA_OPTIONS[0]] + options}
    for _ in range(args.rounds):
      default_run = run_child({"names": ["VisualNet"], "batch": batch, "reps": reps})
      if isinstance(default_run, str):
        raise RuntimeError(default_run)
      runs[XLA_OPTIONS[0][0]].append((default_run, default_run))
      for name, flags, prefix in options:
        spec = {"names": ["VisualNet"], "batch": batch, "reps": reps, "with_torch": bool(prefix)}
        runs[name].append((run_child(spec, flags, prefix), default_run))
    print(
      f"\nXLA:CPU options, VisualNet, one process each, {args.rounds} rounds of {reps} turns; "
      "'vs default' = median over rounds of the option's median / that round's default's "
      f"(range in brackets); torch: the default's process unless the option changes it "
      f"({load()})"
    )
    print(
      f"{'option':34s} {'first s':>8s} {'JAX s':>7s} {'cores':>6s} {'JAX/torch':>9s} "
      f"{'vs default':>10s} {'(range)':>13s}  flags"
    )
    for name, flags, prefix in [XLA_OPTIONS[0]] + options:
      failed = next((o for o, _ in runs[name] if isinstance(o, str)), None)
      if failed:
        print(f"{name:34s} failed: {failed}  {flags}")
        continue
      first = statistics.median(o["VisualNet"]["first"] for o, _ in runs[name])
      jax_seconds = [statistics.median(o["VisualNet"]["jax"]) for o, _ in runs[name]]
      cores = statistics.median(c for o, _ in runs[name] for c in o["VisualNet"]["cores"])
      torch_seconds = [statistics.median((o if prefix else d)["torch"]) for o, d in runs[name]]
      vs = [
        j / statistics.median(d["VisualNet"]["jax"]) for j, (_, d) in zip(jax_seconds, runs[name])
      ]
      print(
        f"{name:34s} {first:8.1f} {statistics.median(jax_seconds):7.3f} {cores:6.1f} "
        f"{median_ratio(jax_seconds, torch_seconds):9.2f} {statistics.median(vs):10.2f} "
        f"  ({min(vs):.2f}-{max(vs):.2f})  {' '.join(prefix)} {flags}".rstrip()
      )

  if only is None or "per layer" in only:
    print(
      f"\nper layer (ms, median of {reps} turns, one process per flag setting): each "
      "convolution's forward, input gradient and kernel gradient; JAX/torch = the three "
      "JAX times summed over torch's"
    )
    for name, flags, _ in XLA_OPTIONS[:2]:
      r = run_child({"layers": True, "batch": batch, "reps": reps}, flags)
      print(f"{name}  {flags}  ({load()})")
      if isinstance(r, str):
        print(f"  failed: {r}")
      else:
        print_layers(r)
  print(f"end: {load()}")


# ---------------------------------------------------------------- input pipeline


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--options_batch", type=int, default=BATCH, help="batch")
  parser.add_argument("--reps", type=int, default=3, help="timed turns per process")
  parser.add_argument(
    "--rounds", type=int, default=2, help="processes per XLA_FLAGS setting, in turns"
  )
  parser.add_argument(
    "--only", default="", help="comma-separated option or program names for --xla_options"
  )
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    spec = json.loads(args.child)
    measure = time_layers if spec.pop("layers", False) else time_in_turns
    print("RESULT " + json.dumps(measure(**spec)))
    return
  xla_options(args)


if __name__ == "__main__":
  main()
