"""PR-curve and P@N plots from `metrics.evaluate_codes` output."""

import matplotlib

matplotlib.use('Agg')  # Files only; evaluation runs on headless machines.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_curves(metrics, path):
  """Writes a PNG: precision-recall over Hamming radii, and precision@N."""
  curves = metrics['curves']
  figure, (pr_axis, pn_axis) = plt.subplots(1, 2, figsize=(10, 4))
  pr_axis.plot(curves['recall_at_radius'], curves['precision_at_radius'],
               marker='.')
  pr_axis.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1),
              title='precision-recall over Hamming radius')
  pn_axis.plot(curves['n'], curves['precision_at_n'], marker='.')
  pn_axis.set(xscale='log', xlabel='N (top ranked items)',
              ylabel='precision@N', ylim=(0, 1), title='precision@N')
  figure.suptitle(f"{metrics['bits']} bits, mAP@"
                  f"{'all' if metrics['topk'] == -1 else metrics['topk']} = "
                  f"{metrics['map']:.4f} ({metrics['ties']})")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
