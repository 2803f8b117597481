#!/usr/bin/env bash
# Create the training venv (outside the repository) and train the lumbar-vertebrae-mr model.
#   models/lumbar-vertebrae-mr/train/run.sh [--smoke] [--minutes N]
# Output: models/lumbar-vertebrae-mr/train/out/{model.onnx, metrics.json}; copy model.onnx next to model.toml
# after checking metrics.json, then choose the decision weights on the validation split:
#   "$venv/bin/python" calibrate.py --model out/model.onnx --out out/calibration.json
# and copy calibration.json beside model.toml, set [output] class_weights from it, and update
# MODEL_CARD.md with its figures. Options: --context N (2.5D input), --steps N (step budget),
# --shift-mode pad --shift-rows 24 (head-foot shifts of +-48 mm). Field-of-view robustness on the
# validation split: "$venv/bin/python" robustness.py --model out/model.onnx --background-weight W
# (--mode crop: shorter images instead of shifted ones; --split train --limit N: training volumes).
# Two-pass re-centring experiment (not in the node): "$venv/bin/python" recenter.py --model out/model.onnx
# Cross-validation: train.py --cv-fold K (K = 0, 1, 2; holds out train[K::3]), then
# "$venv/bin/python" crossval.py --runs DIR0 DIR1 DIR2 (held-out training volumes only; never the test split).
# 1.2.1 (shipped; 1.2.0 plus --keep-all-pieces below): four runs "--steps 1350 --shift-mode pad --shift-rows 24 --seed S" (S = 0..3),
# "$venv/bin/python" ensemble.py --merge-only --out DIR out0/model.onnx ... out3/model.onnx, then
# calibrate.py --model DIR/model.onnx --out DIR/calibration.json --order-relabel --split-factor 1.5
# --keep-all-pieces, copy calibration["level_order"] into model.toml [output.level_order] and set
# largest_component = calibration["largest_component"] (false) on every level.
# 1.3.0 (shipped): the same four runs with --refit (train + validation, 35 volumes, final weights), then
# calibrate.py ... --keep-all-pieces --background-weight 0.2 (the weight is not re-chosen: validation is training data).
# train/ceiling.py (NumPy/SciPy): the Dice a perfect predictor keeps through the 2 mm grid (0.993).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${MYONODE_TRAIN_VENV:-$HOME/.cache/myonode/train-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
export MYONODE_DATA="${MYONODE_DATA:-$here/../../../../shared/data}"
exec "$venv/bin/python" "$here/train.py" --out "$here/out" "$@"
