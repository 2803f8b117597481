#!/usr/bin/env python3
"""Score cross-validation runs of ``train.py --cv-fold K`` on their held-out TRAINING volumes.

Five validation volumes never showed the level errors that two test volumes show, so they
cannot tell two recipes apart on that. A run with ``--cv-fold K`` holds out every third
training volume (``train[K::3]``, listed as ``cv_heldout`` in its ``metrics.json``); three folds
give every one of the 30 training volumes once as a held-out volume, never the test split.

For each run DIR (``DIR/model.onnx`` + ``DIR/metrics.json``): the background decision weight is
chosen on the validation split exactly as ``calibrate.py`` does; then every held-out volume is
scored as acquired and with the field of view changed (``--conditions``: ``shift:S`` or
``crop:S`` as in ``robustness.py``), with the network's labels and with
``calibrate.relabel_by_order`` (``--relabel``). Per case:
mean Dice over L1..L5, the predicted levels lying more on a neighbouring ground-truth level than
on their own (``robustness.shifted_levels``), and the ground-truth L1 centroid below the first
imaged row. The test split is not read.

Usage: ``python crossval.py --runs out/roll0 out/roll1 out/roll2 [--out F]``
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

import calibrate
import robustness
import train


def choose_weight(sess, val_f):
    val = [(calibrate.logits_full_res(sess, train.load(f)[0], 0), train.load(f)[1]) for f in val_f]
    table = []
    for w in calibrate.GRID:
        preds = [calibrate.decide(lg, w) for lg, _ in val]
        table.append((w, float(np.mean([np.mean(train.dice_per_level(p, gt)) for p, (_, gt) in zip(preds, val)])),
                      sum(train.level_order_ok(p) for p in preds)))
    ok = [r for r in table if r[2] == len(val)] or table
    return max(ok, key=lambda r: r[1])[:2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--conditions", nargs="*", default=["shift:0", "shift:-32", "crop:-32"])
    ap.add_argument("--relabel", nargs="+", default=["none", "order", "order-split:1.5"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    _, val_f, _ = train.split(sorted(train.data_dir().glob("*.mat")))
    by_name = {f.name: f for f in train.data_dir().glob("*.mat")}
    out = []
    for run in args.runs:
        metrics = json.loads((run / "metrics.json").read_text())
        heldout = metrics["cv_heldout"]
        assert heldout and not set(heldout) & set(metrics["test"] or []), "not a cross-validation run"
        sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
        w0, val_dice = choose_weight(sess, val_f)
        print(json.dumps({"run": str(run), "shift_mode": metrics["shift_mode"], "background_weight": w0,
                          "val_dice": round(val_dice, 4)}), flush=True)
        for name in heldout:
            img0, gt0 = train.load(by_name[name])
            for cond in args.conditions:
                mode, s = cond.split(":")
                img, gt, first = robustness.moved(img0, gt0, int(s), mode)
                lg = calibrate.logits_full_res(sess, img, 0) if img.shape[0] == 224 else robustness.logits_padded(sess, img)
                l1 = np.argwhere(gt == 1)[:, 0]
                for relabel_spec in args.relabel:
                    # "none": the network's labels; "order": relabel_by_order; "order-split:F": with
                    # components larger than F times the median split into the network's labels
                    # "RELABEL@w1,w2,w3,w4,w5": with decision weights of L1..L5 (background: the chosen w0)
                    relabel, _, lw = relabel_spec.partition("@")
                    calibrate.LEVEL_WEIGHTS = [float(x) for x in lw.split(",")] if lw else None
                    calibrate.ORDER_RELABEL = relabel != "none"
                    # "order-split-all:F": the same without the largest-component step afterwards
                    calibrate.SPLIT_FACTOR = float(relabel.split(":")[1]) if relabel.startswith("order-split") else None
                    calibrate.KEEP_ALL_PIECES = relabel.startswith("order-split-all")
                    # "order-split-all-fill:F": and the holes of each level filled (node: fill_holes)
                    calibrate.FILL_HOLES = relabel.startswith("order-split-all-fill:")
                    pred = calibrate.decide(lg, w0)
                    d = train.dice_per_level(pred, gt)
                    out.append({"run": run.name, "shift_mode": metrics["shift_mode"], "background_weight": w0,
                                "val_dice": val_dice, "volume": name, "condition": cond, "order_relabel": relabel_spec,
                                "dice": float(np.mean(d)), "dice_per_level": [round(x, 3) for x in d],
                                "shifted_levels": robustness.shifted_levels(pred, gt),
                                "gt_l1_mm": round(float(l1.mean()) - first, 1) if l1.size else None})
                    print(json.dumps({k: out[-1][k] for k in ("run", "volume", "condition", "order_relabel",
                                                               "shifted_levels")} | {"dice": round(out[-1]["dice"], 3)}),
                          flush=True)
        calibrate.ORDER_RELABEL, calibrate.SPLIT_FACTOR, calibrate.KEEP_ALL_PIECES = False, None, False
        calibrate.FILL_HOLES, calibrate.LEVEL_WEIGHTS = False, None
    # summary per recipe, condition and relabel flag
    summary = {}
    for r in out:
        key = f'{r["shift_mode"]} {r["condition"]} relabel={r["order_relabel"]}'
        s = summary.setdefault(key, {"cases": 0, "dice": [], "with_shifted_levels": 0})
        s["cases"] += 1
        s["dice"].append(r["dice"])
        s["with_shifted_levels"] += bool(r["shifted_levels"])
    for key, s in summary.items():
        s["mean_dice"] = float(np.mean(s.pop("dice")))
        print(json.dumps({"summary": key} | s))
    if args.out:
        args.out.write_text(json.dumps({"cases": out, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
