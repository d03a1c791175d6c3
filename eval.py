"""Evaluates hash codes: mAP, PR and P@N curves, precision within radius 2.

  python eval.py --codes FILE.npz [--topk K] [--ties stable|reference|tie_aware]
      [--output_dir DIR]
  python eval.py --query_codes_t q.t --database_codes_t db.t \
      --query_labels_t ql.t --database_labels_t dbl.t   # needs torch
  python eval.py --workdir=DIR [--database_codes learned|encoded] [--topk K] [--ties ...]
      [--output_dir OUT]

--workdir re-evaluates a run written by train.py from its newest readable checkpoints:
queries are encoded with the visual network; the database codes are the
learned asymmetric codes (as the reference) or the database images encoded
with the visual network (--database_codes=encoded, the inductive mode). The
run's own eval settings apply unless --topk / --ties are given; the output is
then one JSON object keyed by code length, and each code length's codes.npz,
curves.png and metrics.json go to OUT/bits_<c>/ with --output_dir, else to
DIR/bits_<c>/eval/ (nothing is written when DIR is read-only). Nothing else
in DIR is written: a run can be evaluated while it trains.

Prints one JSON object (without the curves) on the last line of stdout; with
--output_dir also writes metrics.json (with curves) and curves.png there.
A mistake in the flags or files prints one `error: ...` line, exit status 2.
"""

import json
import logging
import pathlib

from absl import flags

from schn_jax import errors, evaluator, files
from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.evaluation import plots

_CODES = flags.DEFINE_string(
  "codes", None, "Code npz: query_codes, database_codes, query_labels, database_labels."
)
_TORCH_FILES = {
  key: flags.DEFINE_string(f"{key}_t", None, f"{key} saved with torch.save (.t).")
  for key in codes_lib.CODE_KEYS
}
_TOPK = flags.DEFINE_integer("topk", -1, "K of mAP@K; -1 for all.")
_TIES = flags.DEFINE_enum(
  "ties", "stable", metrics_lib.TIE_MODES, "How tied Hamming distances are ordered."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py run to re-evaluate.")
_DATABASE_CODES = flags.DEFINE_enum(
  "database_codes",
  None,
  ("learned", "encoded"),
  "With --workdir: learned asymmetric codes or encoded database images.",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Write metrics.json and curves.png here.")


def load_inputs():
  """The four arrays from --codes or the four --*_t files."""
  torch_paths = {key: flag.value for key, flag in _TORCH_FILES.items()}
  if _CODES.value and not any(torch_paths.values()):
    return codes_lib.load_codes(_CODES.value)
  if all(torch_paths.values()) and not _CODES.value:
    return codes_lib.load_torch_codes(**torch_paths)
  raise errors.UserError(
    "give --codes FILE.npz, or all four of " + ", ".join(f"--{key}_t" for key in torch_paths)
  )


def prepare_output_dir(inputs, run=None):
  """Creates --output_dir after refusing one that would overwrite an input (or
  lie inside the run folder `run`); returns it as a Path, or None."""
  if not _OUTPUT_DIR.value:
    return None
  output_dir = pathlib.Path(_OUTPUT_DIR.value)
  if output_dir.exists() and not output_dir.is_dir():
    raise files.PathError(f"--output_dir={output_dir} is a file: give a folder.")
  outputs = [("--output_dir", output_dir / name) for name in ("metrics.json", "curves.png")]
  files.check_outputs(outputs, inputs, folders=[("the run folder", run)], writable=False)
  try:
    output_dir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise files.PathError(
      f"--output_dir={output_dir}: cannot create it ({error.strerror or error})."
    ) from None
  for name, path in outputs:
    files.check_writable(name, path)
  return output_dir


def evaluate_workdir():
  """--workdir mode: the run's checkpoints, the flags given explicitly as overrides."""
  given = [
    f"--{name}"
    for name in ("codes", *(f"{key}_t" for key in codes_lib.CODE_KEYS))
    if flags.FLAGS[name].value
  ]
  if given:
    raise errors.UserError(
      f"--workdir evaluates a run's checkpoints; {', '.join(given)} "
      "names codes to evaluate instead: give one or the other"
    )
  overrides = {
    name: flags.FLAGS[name].value for name in ("topk", "ties") if flags.FLAGS[name].present
  }
  if _DATABASE_CODES.value:
    overrides["database_codes"] = _DATABASE_CODES.value
  output_dir = prepare_output_dir([("--workdir", _WORKDIR.value)], run=_WORKDIR.value)
  results = evaluator.evaluate_run(_WORKDIR.value, overrides, output_dir)
  print(json.dumps(results))


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  # Orbax logs through absl's logger, at INFO and (for the read-only checkpoints
  # evaluation opens) at WARNING; JAX logs its backend probing.
  logging.getLogger("absl").setLevel(logging.ERROR)
  logging.getLogger("jax").setLevel(logging.WARNING)
  if _WORKDIR.value:
    return evaluate_workdir()
  if _DATABASE_CODES.value:
    raise errors.UserError(
      "--database_codes applies to --workdir only: code files hold their database codes"
    )
  inputs = [("--codes", _CODES.value)]
  inputs += [(f"--{key}_t", flag.value) for key, flag in _TORCH_FILES.items()]
  output_dir = prepare_output_dir(inputs)
  metrics = metrics_lib.evaluate_codes(**load_inputs(), topk=_TOPK.value, ties=_TIES.value)
  if output_dir:
    files.write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2), "--output_dir")
    plots.plot_curves(metrics, output_dir / "curves.png")
  summary = {key: value for key, value in metrics.items() if key != "curves"}
  print(json.dumps(summary))


if __name__ == "__main__":
  errors.run(main)
