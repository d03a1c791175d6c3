"""Writes a trained run's weights as one .safetensors (or .npz) file; no torch.

    python -m schn_jax.export --workdir=RUN --bits=32 --out=model.safetensors
    python -m schn_jax.export --workdir=RUN --bits=32 --part=all --out=schn.safetensors

--part=visual (default) writes what inference needs, the visual network with
the run's config and code length: `python -m schn_jax.encode --model=FILE`
and `inference.TrainedModel.from_weights` read it, with no run folder.
--part=all writes every SCHN parameter (visual, semantic and cycle parts),
and BatchNorm's running statistics under batch_stats/ where the backbone has
them, for fine-tuning or inspection; `interop.weights.load_params` reads it
back into a tree of that shape. Names are '/'-joined Flax paths
(visual/backbone/features_0/kernel), arrays in Flax layout.
"""

import logging

from absl import flags

from schn_jax import errors, files, inference, run_folder
from schn_jax.interop import weights

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder written by train.py.")
_BITS = flags.DEFINE_integer("bits", None, "Code length; default: the run's only one.")
_STEP = flags.DEFINE_integer(
  "step", None, "Checkpoint to export; default: the newest that reads back."
)
_PART = flags.DEFINE_enum(
  "part", "visual", ("visual", "all"), "visual: an inference model; all: every SCHN parameter."
)
_OUT = flags.DEFINE_string("out", None, "The .safetensors or .npz file to write.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  for name in ("absl", "jax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  if not _OUT.value.endswith((".safetensors", ".npz")):
    raise errors.UserError(f"--out={_OUT.value}: name a .safetensors or .npz file.")
  files.check_outputs(
    [("--out", _OUT.value)],
    [("--workdir", _WORKDIR.value)],
    folders=[("the run folder", _WORKDIR.value)],
  )
  if _PART.value == "visual":
    model = inference.TrainedModel.from_workdir(_WORKDIR.value, _BITS.value, _STEP.value)
    model.export(_OUT.value)
    step, bits = model.step, model.bits
  else:
    saved = run_folder.read_checkpoint(_WORKDIR.value, _BITS.value, _STEP.value, whole=True)
    weights.save_params(
      inference.file_tree(saved.variables["params"], saved.variables["batch_stats"]),
      _OUT.value,
      {
        "format": "schn_jax.params/1",
        "config": saved.config.to_json_best_effort(),
        "bits": str(saved.bits),
        "step": str(saved.step),
      },
    )
    step, bits = saved.step, saved.bits
  print(f"{_OUT.value}: {_PART.value} weights of {bits} bits, checkpoint {step}")


def cli():
  errors.run(main)


if __name__ == "__main__":
  cli()
