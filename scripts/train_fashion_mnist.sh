#!/usr/bin/env bash
# The main job on the offline default: set up, train SCHN on Fashion-MNIST, print the metrics.
# Extra arguments go to train.py, e.g. --config.variant=mmasia --config.code_lengths='(32,)'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir=${WORKDIR:-runs/fashion_mnist}
.venv/bin/python train.py --config=configs/fashion_mnist.py --workdir="$workdir" "$@"
.venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({b: {k: v[k] for k in ('map','topk','ties','variant','iterations','train_seconds')} for b, v in m.items()}, indent=2))" "$workdir/metrics.json"
