#!/usr/bin/env python3
"""Choose the background decision weight of a trained model on the VALIDATION volumes, then
score the TEST volumes with it; writes the figures for the model card.

The network's argmax under-segments the vertebral bodies (almost every error is label ->
background, see MODEL_CARD.md). A Bayes decision with a lower cost for calling a voxel
foreground (label = argmax_k w_k p_k, w_0 < 1 for the background; Duda, Hart & Stork,
*Pattern Classification*, 2nd ed., section 2.2) corrects that bias. The node applies the
same rule from the manifest (``[output] class_weights``), adding ln w_k to the logits before
the resampling back to the source grid; here the logits are upsampled bilinearly exactly as
``train.predict_volume`` does and ln w_0 is added before the argmax.

The weight is chosen only from the validation volumes (best mean Dice among weights whose
validation volumes all keep L1..L5 in order); the test volumes are scored once, with that
weight, and with weight 1 for comparison.

Usage: ``python calibrate.py --model DIR/model.onnx --out DIR/calibration.json``
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

import robustness
import train

GRID = [1.0, 0.7, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05]


def logits_full_res(sess, img, context):
    """Logits (6, 224, 224, 77) at 1 mm for one volume: model at 2 mm in-plane, linear upsampling.
    A model whose input has rank 5 is a 3-D model (``train3d.py``, or a 2-D + 3-D ensemble from
    ``ensemble.py --with-3d``) and gets the whole volume at once, as the node feeds it."""
    if len(sess.get_inputs()[0].shape) == 5:
        import train3d
        return train3d.logits_full_res(
            lambda x: torch.from_numpy(sess.run(None, {"image": np.ascontiguousarray(x.numpy(), np.float32)})[0]), img)
    train.CONTEXT = context
    xs, _ = train.to_slices(img, np.zeros(img.shape, np.int64))
    out = []
    for i in range(0, len(xs), 16):
        lg = torch.from_numpy(sess.run(None, {"image": np.ascontiguousarray(xs[i:i + 16], np.float32)})[0])
        out.append(F.interpolate(lg, scale_factor=2, mode="bilinear", align_corners=False))
    return torch.cat(out).permute(1, 2, 3, 0).numpy()  # (6, 224, 224, 77)


ORDER_RELABEL = False  # set by --order-relabel


SPLIT_FACTOR = None  # set by --split-factor (relabel_by_order)
KEEP_ALL_PIECES = False  # --keep-all-pieces / crossval.py "order-split-all:F": no largest-component step after the relabel
LEVEL_WEIGHTS = None  # --level-weights / crossval.py "...@w1,w2,w3,w4,w5": decision weights of L1..L5 (default 1)
FILL_HOLES = False  # --fill-holes / crossval.py "order-split-all-fill:F": fill the holes of each level (node: fill_holes)


def relabel_by_order(lab, min_voxels=2000, merge_mm=15.0, split_factor=None):
    """Give the vertebral bodies of a label map consecutive levels (``--order-relabel``; the node's
    ``postprocess::order_levels``, manifest ``[output.level_order]``, does the same on its grid).

    `lab` (224,224,77) labels 0..5 at 1 mm, axis 0 head->foot. The foreground is split into
    3-D components (6-connected) of at least `min_voxels`; components whose head-foot centroids
    lie within `merge_mm` of each other are one body (a body cut in parts by dark marrow); the
    bodies are ordered head->foot and body j gets level j + o, the offset o chosen to agree with
    the most voxels' own labels. Bodies mapped outside L1..L5 and smaller pieces become
    background. A body whose voxels the network split between two neighbouring levels
    (ensemble members that disagree by one level) thus gets one level, in order.
    With `split_factor` (``--split-factor``), a component larger than `split_factor` times the
    median component holds several bodies joined through a disc and is split into the network's
    own labels first. Scored by cross-validation in ``crossval.py`` (MODEL_CARD.md, session 11)."""
    import scipy.ndimage as ndi
    cc, n = ndi.label(lab > 0)
    if n == 0:
        return lab
    idx = np.arange(1, n + 1)
    sizes = ndi.sum(np.ones_like(cc), cc, idx)
    rows = ndi.mean(np.broadcast_to(np.arange(lab.shape[0])[:, None, None], lab.shape), cc, idx)
    split_factor = SPLIT_FACTOR if split_factor is None else split_factor
    parts = [(float(r), cc == i) for r, i, sz in sorted(zip(rows, idx, sizes)) if sz >= min_voxels]
    if split_factor and parts:
        # a component much larger than the typical one holds several bodies joined through a
        # disc: split it into the network's own labels
        median = float(np.median([m.sum() for _, m in parts]))
        split = []
        for r, m in parts:
            if m.sum() > split_factor * median:
                for v in range(1, train.NUM_CLASSES):
                    sub = m & (lab == v)
                    if sub.sum() >= min_voxels:
                        split.append((float(np.argwhere(sub)[:, 0].mean()), sub))
            else:
                split.append((r, m))
        parts = sorted(split, key=lambda p: p[0])
    bodies = []
    for r, m in parts:
        if bodies and r - bodies[-1][0] < merge_mm:
            bodies[-1][1] = bodies[-1][1] | m
        else:
            bodies.append([r, m])
    masks = [m for _, m in bodies]
    votes = np.array([[int((lab[m] == v).sum()) for v in range(train.NUM_CLASSES)] for m in masks])
    best, best_o = -1, 0
    # every offset that maps at least one body to L1..L5 (the node's order_levels, same ties)
    for o in range(2 - len(bodies), train.NUM_CLASSES):
        score = sum(votes[j, j + o] for j in range(len(bodies)) if 1 <= j + o <= train.NUM_CLASSES - 1)
        if score > best:
            best, best_o = score, o
    out = np.zeros_like(lab)
    for j, m in enumerate(masks):
        if 1 <= j + best_o <= train.NUM_CLASSES - 1:
            out[m] = j + best_o
    return out


def decide(logits, background_weight):
    shifted = logits.copy()
    shifted[0] += np.float32(np.log(background_weight))
    if LEVEL_WEIGHTS is not None:
        for k, w in enumerate(LEVEL_WEIGHTS, start=1):
            shifted[k] += np.float32(np.log(w))
    lab = shifted.argmax(0)
    if ORDER_RELABEL:
        lab = relabel_by_order(lab)
        if KEEP_ALL_PIECES:
            # every piece >= min_voxels that relabel_by_order kept
            return fill_holes(lab) if FILL_HOLES else lab
    lab = train.largest_component_per_label(lab)
    return fill_holes(lab) if FILL_HOLES else lab


def fill_holes(lab):
    """The node's ``fill_holes`` per level in label order: voxels of any other label or background
    enclosed by the level (not 6-connected to the volume border) get the level."""
    import scipy.ndimage as ndi
    out = lab.copy()
    for v in range(1, train.NUM_CLASSES):
        m = out == v
        if m.any():
            out[ndi.binary_fill_holes(m) & ~m] = v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--validation-only", action="store_true",
                    help="score the validation split only (to compare candidates without looking at the test split)")
    ap.add_argument("--fov-shifts", type=int, nargs="*", default=[-32, 32],
                    help="also score the test split with the field of view moved by these mm head-foot "
                         "(robustness.shift_rows), with the chosen weight")
    ap.add_argument("--order-relabel", action="store_true",
                    help="consecutive levels per body (relabel_by_order) before the largest component")
    ap.add_argument("--split-factor", type=float, default=None,
                    help="relabel_by_order: split components larger than this times the median into the network's labels")
    ap.add_argument("--keep-all-pieces", action="store_true",
                    help="with --order-relabel: keep every piece the relabel assigned to a level (no largest "
                         "component per label afterwards; node: largest_component = false). Chosen by "
                         "crossval.py order-split-all (MODEL_CARD.md, session 13)")
    ap.add_argument("--background-weight", type=float, default=None,
                    help="use this w_0 and do not choose it on the validation split (for a model trained with "
                         "train.py --refit, whose training data include the validation volumes)")
    args = ap.parse_args()
    global ORDER_RELABEL, SPLIT_FACTOR, KEEP_ALL_PIECES
    if args.validation_only and args.background_weight is not None:
        ap.error("--validation-only chooses the weight on validation; it excludes --background-weight")
    ORDER_RELABEL = args.order_relabel
    SPLIT_FACTOR = args.split_factor
    KEEP_ALL_PIECES = args.keep_all_pieces and args.order_relabel
    sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    channels = sess.get_inputs()[0].shape[1]
    context = (int(channels) - 1) // 2 if len(sess.get_inputs()[0].shape) == 4 else 0
    files = sorted(train.data_dir().glob("*.mat"))
    _, val_f, test_f = train.split(files)

    val = []
    for f in ([] if args.background_weight is not None else val_f):
        img, gt = train.load(f)
        val.append((logits_full_res(sess, img, context), gt))
    table = []
    for w in ([] if args.background_weight is not None else GRID):
        preds = [decide(lg, w) for lg, _ in val]
        dice = [float(np.mean(train.dice_per_level(p, gt))) for p, (_, gt) in zip(preds, val)]
        order = [train.level_order_ok(p) for p in preds]
        table.append({"background_weight": w, "val_mean_dice": float(np.mean(dice)), "val_order_ok": sum(order)})
        print(json.dumps(table[-1]), flush=True)
    if args.background_weight is not None:
        chosen = args.background_weight
    else:
        ok = [r for r in table if r["val_order_ok"] == len(val)] or table
        chosen = max(ok, key=lambda r: r["val_mean_dice"])["background_weight"]
    del val
    if args.validation_only:
        args.out.write_text(json.dumps({"model": str(args.model), "grid": table, "background_weight": chosen,
                                        "validation": [f.name for f in val_f]}, indent=2))
        print(f"validation only: background weight {chosen}, mean validation Dice "
              f"{max(ok, key=lambda r: r['val_mean_dice'])['val_mean_dice']:.4f}")
        return

    results = {"model": str(args.model), "context_slices": context, "order_relabel": ORDER_RELABEL,
               # the node's [output.level_order] that reproduces relabel_by_order (1 mm voxels:
               # min_voxels 2000 = 2.0 mL); None without --order-relabel
               "level_order": ({"labels": list(range(1, train.NUM_CLASSES)), "min_volume_ml": 2.0,
                                "merge_mm": 15.0, "split_factor": SPLIT_FACTOR} if ORDER_RELABEL else None),
               # the node's per-label largest_component (model.toml [[labels]]) that matches decide()
               "largest_component": not KEEP_ALL_PIECES,
               "grid": table, "background_weight": chosen,
               "background_weight_fixed": args.background_weight is not None,
               "validation": [f.name for f in val_f], "test": [f.name for f in test_f]}
    for name, w in (("uncalibrated", 1.0), ("calibrated", chosen)):
        per_volume = {}
        for f in test_f:
            img, gt = train.load(f)
            pred = decide(logits_full_res(sess, img, context), w)
            d = train.dice_per_level(pred, gt)
            per_volume[f.name] = {"dice": dict(zip(train.LEVELS, d)), "mean": float(np.mean(d)),
                                  "level_order_ok": train.level_order_ok(pred)}
        means = [v["mean"] for v in per_volume.values()]
        results[name] = {
            "test_results": per_volume,
            "test_mean_dice": float(np.mean(means)),
            "test_min_volume_dice": float(np.min(means)),
            "test_mean_dice_per_level": {l: float(np.mean([v["dice"][l] for v in per_volume.values()]))
                                         for l in train.LEVELS},
        }
        print(name, w, json.dumps(results[name]["test_mean_dice_per_level"]), results[name]["test_mean_dice"], flush=True)
    # the test volumes again with the field of view moved head-foot (robustness.py does this on the
    # validation split to choose; here it is scored once for the card and for the node's test)
    shifted = {}
    for s in args.fov_shifts:
        per_volume = {}
        for f in test_f:
            img, gt = train.load(f)
            img, gt = robustness.shift_rows(img, s, img.min()), robustness.shift_rows(gt, s, 0)
            pred = decide(logits_full_res(sess, img, context), chosen)
            d = train.dice_per_level(pred, gt)
            per_volume[f.name] = {"dice": dict(zip(train.LEVELS, d)), "mean": float(np.mean(d)),
                                  "level_order_ok": train.level_order_ok(pred)}
        shifted[str(s)] = {"test_results": per_volume,
                           "test_mean_dice": float(np.mean([v["mean"] for v in per_volume.values()]))}
        print(f"field of view moved {s} mm: test mean Dice {shifted[str(s)]['test_mean_dice']:.4f}", flush=True)
    results["fov_shift_mm"] = shifted
    args.out.write_text(json.dumps(results, indent=2))
    print(f"background weight {chosen}: class_weights = [{chosen}, 1.0, 1.0, 1.0, 1.0, 1.0]")


if __name__ == "__main__":
    main()
