#!/usr/bin/env python3
"""Score a model on the VALIDATION volumes with the field of view moved head-foot.

The 40 training volumes place the lumbar spine very consistently (L1 centroid 13-57 mm from
the top of the image, L5 165-197 mm), so a model may learn a level's label from where it sits
in the image instead of counting from the sacrum. A scanner's lumbar field of view is placed by
hand and varies more than that. This script moves each validation volume by ``--shifts`` mm
along the head-foot axis (axis 0; positive = anatomy moves toward the feet), fills the uncovered
rows with the volume's minimum (no signal) and background, shifts the labels alike, and reports
mean Dice and level order (``train.level_order_ok``) per shift with the decision weight chosen
by ``calibrate.py`` (``--background-weight``). Only the validation split is read.

Usage: ``python robustness.py --model DIR/model.onnx [--background-weight 0.2] [--shifts -32 -16 16 32]``
"""
import argparse
import json
from pathlib import Path

import numpy as np

# calibrate and train (PyTorch) are imported in main(): integration/test_lumbar_model.py imports
# shift_rows from here with only NumPy installed, so the node's test moves a volume exactly as the card did


def shift_rows(vol, s, fill):
    """`vol` (224,224,77) moved by `s` rows along axis 0 (positive: toward higher rows = feet)."""
    out = np.full_like(vol, fill)
    if s >= 0:
        out[s:] = vol[:vol.shape[0] - s]
    else:
        out[:s] = vol[-s:]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--background-weight", type=float, default=0.2)
    ap.add_argument("--shifts", type=int, nargs="+", default=[-32, -16, 16, 32])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--order-relabel", action="store_true", help="see calibrate.relabel_by_order")
    args = ap.parse_args()
    import calibrate
    import train
    calibrate.ORDER_RELABEL = args.order_relabel
    import onnxruntime as ort
    sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    _, val_f, _ = train.split(sorted(train.data_dir().glob("*.mat")))
    rows = []
    for s in args.shifts:
        dice, order = [], []
        for f in val_f:
            img, gt = train.load(f)
            img, gt = shift_rows(img, s, img.min()), shift_rows(gt, s, 0)
            pred = calibrate.decide(calibrate.logits_full_res(sess, img, 0), args.background_weight)
            # a level pushed (partly) out of the field of view is scored on what is left of it
            dice.append(float(np.mean(train.dice_per_level(pred, gt))))
            present = [v for v in range(1, 6) if (gt == v).any()]
            zs = [np.argwhere(pred == v)[:, 0].mean() if (pred == v).any() else None for v in present]
            order.append(all(z is not None for z in zs) and all(a < b for a, b in zip(zs, zs[1:])))
        rows.append({"shift_mm": s, "val_mean_dice": float(np.mean(dice)), "per_volume": [round(d, 3) for d in dice],
                     "val_order_ok": int(sum(order))})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"model": str(args.model), "background_weight": args.background_weight, "shifts": rows,
               "mean_over_shifts": float(np.mean([r["val_mean_dice"] for r in rows])),
               "order_ok": f"{sum(r['val_order_ok'] for r in rows)}/{len(rows) * len(val_f)}"}
    print(json.dumps({k: summary[k] for k in ("mean_over_shifts", "order_ok")}))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
