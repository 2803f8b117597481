#!/usr/bin/env python3
"""Score a model on the VALIDATION volumes with the field of view moved head-foot.

The 40 training volumes place the lumbar spine very consistently (L1 centroid 13-57 mm from
the top of the image, L5 165-197 mm), so a model may learn a level's label from where it sits
in the image instead of counting from the sacrum. A scanner's lumbar field of view is placed by
hand and varies more than that. This script moves each validation volume by ``--shifts`` mm
along the head-foot axis (axis 0; positive = anatomy moves toward the feet), fills the uncovered
rows with the volume's minimum (no signal) and background, shifts the labels alike, and reports
mean Dice and level order (``train.level_order_ok``) per shift with the decision weight chosen
by ``calibrate.py`` (``--background-weight``). By default only the validation split is read.

``--mode crop`` instead removes ``|s|`` rows at the head end (s < 0) or the foot end (s > 0) and
keeps the image shorter, so no band without signal appears: the image is padded at the foot end
with zeros after normalisation to the 112-row window, as the node's sliding window does
(``src/segment/onnx/sliding_window.rs::copy_window``). Each case also reports where the
ground-truth L1 centroid lies below the first imaged row (``gt_l1_mm``) and which predicted levels
lie more on a neighbouring ground-truth level than on their own (``shifted_levels``); with
``--split train --limit N`` the first N training volumes are used instead (out-of-distribution
placements of images the model was trained on, for the edge analysis only).

Usage: ``python robustness.py --model DIR/model.onnx [--background-weight 0.2] [--shifts -32 -16 16 32]
[--mode shift|crop] [--split validation|train [--limit N]] [--out F]``
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


def logits_padded(sess, img):
    """Logits (6, H, 224, 77) of a 2-D model for a volume of any even height H: slices at 2 mm
    padded at the foot end with zeros (after the z-score) to at least 112 rows, like the node."""
    import torch
    import torch.nn.functional as F
    import train
    xs, _ = train.to_slices(img, np.zeros(img.shape, np.int64))
    h = xs.shape[2]
    pad = np.zeros((xs.shape[0], xs.shape[1], max(112, h + (-h) % 16), xs.shape[3]), np.float32)
    pad[:, :, :h] = xs
    out = []
    for i in range(0, len(pad), 16):
        lg = torch.from_numpy(sess.run(None, {"image": pad[i:i + 16]})[0])[:, :, :h]
        out.append(F.interpolate(lg, scale_factor=2, mode="bilinear", align_corners=False))
    return torch.cat(out).permute(1, 2, 3, 0).numpy()


def shifted_levels(pred, gt):
    """Predicted levels whose voxels lie more on a neighbouring ground-truth level than on their own."""
    bad = []
    for v in range(1, 6):
        m = pred == v
        if m.any():
            c = np.bincount(gt[m], minlength=6)
            if max(c[v - 1] if v > 1 else 0, c[v + 1] if v < 5 else 0) > c[v]:
                bad.append(v)
    return bad


def moved(img, gt, s, mode):
    """(image, labels, first imaged row) of one case: `shift_rows` or a crop of |s| rows."""
    if mode == "shift":
        return shift_rows(img, s, img.min()), shift_rows(gt, s, 0), max(s, 0)
    if s == 0:
        return img, gt, 0
    sl = slice(-s, None) if s < 0 else slice(None, img.shape[0] - s)
    return img[sl], gt[sl], 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--background-weight", type=float, default=0.2)
    ap.add_argument("--shifts", type=int, nargs="+", default=[-32, -16, 16, 32])
    ap.add_argument("--mode", choices=["shift", "crop"], default="shift")
    ap.add_argument("--split", choices=["validation", "train"], default="validation")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--order-relabel", action="store_true", help="see calibrate.relabel_by_order")
    args = ap.parse_args()
    import calibrate
    import train
    calibrate.ORDER_RELABEL = args.order_relabel
    import onnxruntime as ort
    sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    tr_f, val_f, _ = train.split(sorted(train.data_dir().glob("*.mat")))
    files = (val_f if args.split == "validation" else tr_f)[: args.limit]
    rows, cases = [], []
    for s in args.shifts:
        dice, order = [], []
        for f in files:
            img, gt = train.load(f)
            img, gt, first = moved(img, gt, s, args.mode)
            lg = calibrate.logits_full_res(sess, img, 0) if img.shape[0] == 224 else logits_padded(sess, img)
            pred = calibrate.decide(lg, args.background_weight)
            # a level pushed (partly) out of the field of view is scored on what is left of it
            dice.append(float(np.mean(train.dice_per_level(pred, gt))))
            present = [v for v in range(1, 6) if (gt == v).any()]
            zs = [np.argwhere(pred == v)[:, 0].mean() if (pred == v).any() else None for v in present]
            order.append(all(z is not None for z in zs) and all(a < b for a, b in zip(zs, zs[1:])))
            l1 = np.argwhere(gt == 1)[:, 0]
            cases.append({"volume": f.name, "mode": args.mode, "s_mm": s, "dice": round(dice[-1], 3),
                          "gt_l1_mm": round(float(l1.mean()) - first, 1) if l1.size else None,
                          "shifted_levels": shifted_levels(pred, gt)})
        rows.append({"shift_mm": s, "val_mean_dice": float(np.mean(dice)), "per_volume": [round(d, 3) for d in dice],
                     "val_order_ok": int(sum(order))})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"model": str(args.model), "background_weight": args.background_weight, "mode": args.mode,
               "split": args.split, "volumes": [f.name for f in files], "shifts": rows,
               "mean_over_shifts": float(np.mean([r["val_mean_dice"] for r in rows])),
               "order_ok": f"{sum(r['val_order_ok'] for r in rows)}/{len(rows) * len(files)}", "cases": cases}
    print(json.dumps({k: summary[k] for k in ("mean_over_shifts", "order_ok")}))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
