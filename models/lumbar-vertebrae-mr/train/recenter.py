#!/usr/bin/env python3
"""Two-pass field-of-view re-centring, scored on the VALIDATION volumes with the field of view moved.

The shipped 2-D model labels a vertebral level partly by where it sits in the image (MODEL_CARD.md,
"What the field-of-view runs show"): moved 32 mm towards the head, three test volumes lose their
levels. The training volumes place the lumbar spine consistently, so the lumbar spine can be put
back where the model expects it before the levels are decided:

1. pass 1: segment the volume as it is; take the head-foot centroid ``c`` (mm from the first row)
   of all L1..L5 voxels after the decision rule and the largest component per label;
2. move the image by ``d = reference - c`` rows along axis 0 (``robustness.shift_rows``: no
   wrap-around, uncovered rows get the volume's minimum), rounded to the model's in-plane grid
   (2 mm), when ``|d|`` is at least ``--min-shift-mm``;
3. pass 2: segment the moved image, move its logits back by ``-d``; rows pass 2 did not see keep
   the pass-1 logits; then the decision rule and the largest component per label.
``--iterations`` repeats steps 1-3 on the last result's centroid.

``reference`` is the mean head-foot centroid of the L1..L5 labels of the TRAINING volumes (never
validation or test). Every variant is scored on validation at shifts ``--shifts`` (0 included);
the test split is not read unless ``--test`` is given.

Usage: ``python recenter.py --model ../model.onnx [--background-weight 0.2] [--test] [--out F]``
"""
import argparse
import json
from pathlib import Path

import numpy as np

import calibrate
import robustness
import train


def foreground_centroid_row(lab):
    """Mean axis-0 index (mm at 1 mm spacing) of the voxels labelled 1..5; None without any."""
    rows = np.nonzero((lab > 0).any(axis=(1, 2)))[0]
    if rows.size == 0:
        return None
    return float((lab > 0).sum(axis=(1, 2)) @ np.arange(lab.shape[0]) / (lab > 0).sum())


def training_reference_row(train_files):
    return float(np.mean([foreground_centroid_row(train.load(f)[1]) for f in train_files]))


def recentred_logits(sess, img, w0, reference, min_shift, iterations, grid=2):
    """Logits (6,224,224,77) after `iterations` re-centrings; returns (logits, applied shifts)."""
    lg1 = lg = calibrate.logits_full_res(sess, img, 0)
    applied = []
    total = 0
    for _ in range(iterations):
        c = foreground_centroid_row(calibrate.decide(lg, w0))
        if c is None:
            break
        d = int(grid * round((reference - c) / grid))
        if abs(d) < min_shift:
            break
        total += d
        applied.append(d)
        moved = robustness.shift_rows(img, total, img.min())
        lg2 = calibrate.logits_full_res(sess, moved, 0)
        back = np.moveaxis(robustness.shift_rows(np.moveaxis(lg2, 0, 1), -total, np.nan), 0, 1)
        lg = np.where(np.isnan(back), lg1, back)
    return lg, applied


def score(sess, files, shifts, w0, reference, min_shift, iterations):
    rows = []
    for s in shifts:
        dice, order, moves = [], [], []
        for f in files:
            img, gt = train.load(f)
            img, gt = robustness.shift_rows(img, s, img.min()), robustness.shift_rows(gt, s, 0)
            if iterations == 0:
                lg, applied = calibrate.logits_full_res(sess, img, 0), []
            else:
                lg, applied = recentred_logits(sess, img, w0, reference, min_shift, iterations)
            pred = calibrate.decide(lg, w0)
            dice.append(float(np.mean(train.dice_per_level(pred, gt))))
            present = [v for v in range(1, 6) if (gt == v).any()]
            zs = [np.argwhere(pred == v)[:, 0].mean() if (pred == v).any() else None for v in present]
            order.append(all(z is not None for z in zs) and all(a < b for a, b in zip(zs, zs[1:])))
            moves.append(applied)
        rows.append({"shift_mm": s, "mean_dice": round(float(np.mean(dice)), 4),
                     "per_volume": [round(d, 3) for d in dice], "order_ok": int(sum(order)), "recentre_mm": moves})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--background-weight", type=float, default=0.2)
    ap.add_argument("--shifts", type=int, nargs="+", default=[-32, -16, 0, 16, 32])
    ap.add_argument("--variants", nargs="+", default=["0:0", "1:4"],
                    help="iterations:min-shift-mm; 0:0 is the model without re-centring")
    ap.add_argument("--test", action="store_true", help="also score the test split with --test-variant")
    ap.add_argument("--test-variant", default=None)
    ap.add_argument("--test-shifts", type=int, nargs="+", default=[-32, 0, 32])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import onnxruntime as ort
    sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    tr, val_f, test_f = train.split(sorted(train.data_dir().glob("*.mat")))
    reference = training_reference_row(tr)
    print(json.dumps({"reference_row_mm": round(reference, 2)}), flush=True)
    out = {"model": str(args.model), "background_weight": args.background_weight,
           "reference_row_mm": reference, "validation": {}}
    for v in args.variants:
        it, ms = (int(x) for x in v.split(":"))
        print(f"# validation, variant {v}", flush=True)
        rows = score(sess, val_f, args.shifts, args.background_weight, reference, ms, it)
        out["validation"][v] = {"shifts": rows, "mean_over_shifts": float(np.mean([r["mean_dice"] for r in rows]))}
        print(json.dumps({"variant": v, "mean_over_shifts": round(out["validation"][v]["mean_over_shifts"], 4)}), flush=True)
    if args.test:
        it, ms = (int(x) for x in args.test_variant.split(":"))
        print(f"# test, variant {args.test_variant}", flush=True)
        out["test"] = {args.test_variant: score(sess, test_f, args.test_shifts, args.background_weight, reference, ms, it)}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
