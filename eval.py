"""Evaluates hash codes: mAP, PR and P@N curves, precision within radius 2.

  python eval.py --codes FILE.npz [--topk K] [--ties stable|reference|tie_aware]
      [--output_dir DIR]
  python eval.py --query_codes_t q.t --database_codes_t db.t \
      --query_labels_t ql.t --database_labels_t dbl.t   # needs torch

Prints one JSON object (without the curves) on the last line of stdout; with
--output_dir also writes metrics.json (with curves) and curves.png there.
"""

import json
import pathlib

from absl import app
from absl import flags

from schn_jax.evaluation import codes as codes_lib
from schn_jax.evaluation import metrics as metrics_lib
from schn_jax.evaluation import plots

_CODES = flags.DEFINE_string('codes', None, 'Code npz: query_codes, '
                             'database_codes, query_labels, database_labels.')
_TORCH_FILES = {
    key: flags.DEFINE_string(f'{key}_t', None,
                             f'{key} saved with torch.save (.t).')
    for key in codes_lib.CODE_KEYS
}
_TOPK = flags.DEFINE_integer('topk', -1, 'K of mAP@K; -1 for all.')
_TIES = flags.DEFINE_enum('ties', 'stable', metrics_lib.TIE_MODES,
                          'How tied Hamming distances are ordered.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'Write metrics.json and curves.png here.')


def load_inputs():
  """The four arrays from --codes or the four --*_t files."""
  torch_paths = {key: flag.value for key, flag in _TORCH_FILES.items()}
  if _CODES.value and not any(torch_paths.values()):
    return codes_lib.load_codes(_CODES.value)
  if all(torch_paths.values()) and not _CODES.value:
    return codes_lib.load_torch_codes(**torch_paths)
  raise app.UsageError('Give --codes FILE.npz, or all four of '
                       + ', '.join(f'--{key}_t' for key in torch_paths) + '.')


def main(argv):
  del argv  # Unused.
  try:
    metrics = metrics_lib.evaluate_codes(**load_inputs(), topk=_TOPK.value,
                                         ties=_TIES.value)
  except ValueError as error:  # Includes CodesError: bad files or flags.
    raise app.UsageError(str(error)) from error
  if _OUTPUT_DIR.value:
    output_dir = pathlib.Path(_OUTPUT_DIR.value)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / 'metrics.json').write_text(json.dumps(metrics, indent=2))
    plots.plot_curves(metrics, output_dir / 'curves.png')
  summary = {key: value for key, value in metrics.items() if key != 'curves'}
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
