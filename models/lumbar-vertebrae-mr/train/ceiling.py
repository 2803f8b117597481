#!/usr/bin/env python3
"""What the node's working grid costs a perfect predictor, and how the labels are copied.

For every volume of a split this takes the ground truth as perfect class probabilities (one-hot,
shape (6, 224, 224, 77), axes head->foot, anterior->posterior, sagittal slices), averages them
2x2 in-plane to the model's 2 mm grid (as ``train.to_slices`` does with the image), resamples
them back to 1 mm with the node's linear upsampling (``torch`` bilinear, ``align_corners=False``,
scale 2; ``calibrate.logits_full_res``), takes the argmax and scores 3-D Dice per level against
the ground truth. The mean is the best Dice any model working at 2 mm in-plane can reach here.
It also reports the runs of identical consecutive sagittal label slices (the data README: labels
drawn on ~20 slices and copied to their neighbours).

NumPy and SciPy only (the node's test venv suffices). Split as ``train.split`` (seed 20261122).
Usage: ``python ceiling.py [--split train|validation|test ...]``; data from ``$MYONODE_DATA``
(default ``../../../../shared/data``) ``/training/lumbar-vertebrae-mr``.
"""
import argparse
import os
import random
from pathlib import Path

import numpy as np
import scipy.io

from scoring import NUM_CLASSES, dice_per_level


def data_dir() -> Path:
    root = Path(os.environ.get("MYONODE_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
    return root / "training" / "lumbar-vertebrae-mr"


def split_names(names, seed=20261122):
    """The names of ``train.split`` (30 / 5 / 5), without importing PyTorch."""
    names = sorted(names)
    random.Random(seed).shuffle(names)
    return {"train": names[:30], "validation": names[30:35], "test": names[35:40]}


def upsample2(a, axis):
    """Linear x2 along `axis` with centre-aligned grids (output i samples input (i + 0.5) / 2 - 0.5,
    clamped at the edges): torch's bilinear ``align_corners=False`` one axis at a time."""
    n = a.shape[axis]
    s = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    lo = np.floor(s).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = (s - lo).reshape(shape)
    return np.take(a, lo, axis) * (1 - w) + np.take(a, hi, axis) * w


def grid_ceiling(gt):
    """Labels (H, W, S) -> labels after a perfect prediction has passed the 2 mm grid."""
    h, w, s = gt.shape
    onehot = np.stack([(gt == v).astype(np.float32) for v in range(NUM_CLASSES)])
    coarse = onehot.reshape(NUM_CLASSES, h // 2, 2, w // 2, 2, s).mean(axis=(2, 4))
    return upsample2(upsample2(coarse, 1), 2).argmax(0)


def copy_runs(gt):
    """Lengths of the runs of identical consecutive sagittal slices among slices with labels."""
    ks = [k for k in range(gt.shape[2]) if gt[:, :, k].any()]
    runs, cur = [], 1
    for a, b in zip(ks, ks[1:]):
        if b == a + 1 and np.array_equal(gt[:, :, a], gt[:, :, b]):
            cur += 1
        else:
            runs.append(cur)
            cur = 1
    return runs + [cur]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", nargs="*", default=["train", "validation", "test"])
    args = ap.parse_args()
    splits = split_names(p.name for p in data_dir().glob("*.mat"))
    for name in args.split:
        dice, runs = [], []
        for f in splits[name]:
            gt = scipy.io.loadmat(data_dir() / f)["GT"].astype(np.int64)
            dice.append(dice_per_level(grid_ceiling(gt), gt))
            runs += copy_runs(gt)
        dice = np.array(dice)
        print(f"{name}: 2 mm grid ceiling mean Dice {dice.mean():.4f}, lowest volume {dice.mean(1).min():.4f}, "
              "per level " + " ".join(f"{x:.4f}" for x in dice.mean(0)))
        print(f"  identical sagittal label slices: run length mean {np.mean(runs):.2f}, "
              f"counts of runs of 1, 2, 3, ...: {np.bincount(runs)[1:].tolist()}")


if __name__ == "__main__":
    main()
