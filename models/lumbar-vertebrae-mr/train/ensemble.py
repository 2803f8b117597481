#!/usr/bin/env python3
"""Average the logits of several trained ONNX models into one ONNX graph and score it.

Usage: ``python ensemble.py --out DIR [--merge-only] MODEL.onnx [MODEL.onnx ...]`` (each from ``train.py``,
same split); ``--volumetric`` for members that mix 2-D and 3-D models (``train3d.py``), which
become one 3-D graph on the 1x2x2 mm grid (scored by ``calibrate.py``). Writes ``DIR/model.onnx`` (input ``image``, output ``logits`` = mean of the
members' logits) and ``DIR/metrics.json`` with the held-out test scores computed exactly as
``train.py`` does (2 mm inference, bilinear upsampling of logits, argmax, largest component).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import compose, helper

import train


def merge(paths, out):
    models = [onnx.load(p) for p in paths]
    merged = None
    for i, m in enumerate(models):
        m = compose.add_prefix(m, prefix=f"m{i}_")
        merged = m if merged is None else compose.merge_models(merged, m, io_map=[])
    # feed one shared input to every member, then average the logits
    graph = merged.graph
    shared = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["n", 1, "h", "w"])
    member_inputs = [f"m{i}_image" for i in range(len(models))]
    nodes = [helper.make_node("Identity", ["image"], [name]) for name in member_inputs]
    for inp in list(graph.input):
        graph.input.remove(inp)
    graph.input.append(shared)
    outs = [f"m{i}_logits" for i in range(len(models))]
    nodes.append(helper.make_node("Sum", outs, ["logits_sum"]))
    nodes.append(helper.make_node("Mul", ["logits_sum", "ensemble_scale"], ["logits"]))
    graph.initializer.append(helper.make_tensor("ensemble_scale", onnx.TensorProto.FLOAT, [], [1.0 / len(models)]))
    for o in list(graph.output):
        graph.output.remove(o)
    graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", 6, "h", "w"]))
    for n in reversed(nodes[: len(member_inputs)]):
        graph.node.insert(0, n)
    graph.node.extend(nodes[len(member_inputs):])
    onnx.checker.check_model(merged)
    onnx.save(merged, out)


def merge_volumetric(paths, out):
    """One 3-D graph averaging 2-D (``train.py``) and 3-D (``train3d.py``) members on the same grid.

    Input ``image`` (1, 1, D, 112, 112): the volume at 1x2x2 mm, z = sagittal slices (as the node
    feeds a ``dimensions = "3d"`` model); output ``logits`` (1, 6, D, 112, 112), the mean of the
    members' logits. A 2-D member (input rank 4) gets the D slices as its batch
    (Squeeze + Transpose to (D, 1, 112, 112)) and its (D, 6, 112, 112) logits are put back in
    (1, 6, D, 112, 112) order; a 3-D member gets the input as it is. Batch 1 only (the node runs
    batch 1)."""
    nodes, nodes_post, inits, member_out, merged = [], [], [], [], None
    inits.append(helper.make_tensor("axis0", onnx.TensorProto.INT64, [1], [0]))
    for i, p in enumerate(paths):
        m = compose.add_prefix(onnx.load(p), prefix=f"m{i}_")
        rank = len(m.graph.input[0].type.tensor_type.shape.dim)
        inp, outp = f"m{i}_image", f"m{i}_logits"
        if rank == 4:
            nodes += [helper.make_node("Squeeze", ["image", "axis0"], [f"m{i}_sq"]),
                      helper.make_node("Transpose", [f"m{i}_sq"], [inp], perm=[1, 0, 2, 3])]
            nodes_post += [helper.make_node("Transpose", [outp], [f"m{i}_t"], perm=[1, 0, 2, 3]),
                           helper.make_node("Unsqueeze", [f"m{i}_t", "axis0"], [f"m{i}_vol"])]
            member_out.append(f"m{i}_vol")
        elif rank == 5:
            nodes.append(helper.make_node("Identity", ["image"], [inp]))
            member_out.append(outp)
        else:
            raise SystemExit(f"{p}: input rank {rank}, expected 4 (2-D) or 5 (3-D)")
        merged = m if merged is None else compose.merge_models(merged, m, io_map=[])
    graph = merged.graph
    for inp in list(graph.input):
        graph.input.remove(inp)
    graph.input.append(helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 1, "d", 112, 112]))
    for o in list(graph.output):
        graph.output.remove(o)
    graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 6, "d", 112, 112]))
    for n in reversed(nodes):
        graph.node.insert(0, n)
    graph.node.extend(nodes_post)
    graph.node.append(helper.make_node("Sum", member_out, ["logits_sum"]))
    graph.node.append(helper.make_node("Mul", ["logits_sum", "ensemble_scale"], ["logits"]))
    inits.append(helper.make_tensor("ensemble_scale", onnx.TensorProto.FLOAT, [], [1.0 / len(paths)]))
    graph.initializer.extend(inits)
    onnx.checker.check_model(merged)
    onnx.save(merged, out)


def predict(sess, img):
    xs, _ = train.to_slices(img, np.zeros(img.shape, np.int64))  # (n, channels, y, x) since --context
    lg = sess.run(None, {"image": np.ascontiguousarray(xs, np.float32)})[0]
    lg = F.interpolate(torch.from_numpy(lg), scale_factor=2, mode="bilinear", align_corners=False)
    return train.largest_component_per_label(lg.argmax(1).permute(1, 2, 0).numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--volumetric", action="store_true",
                    help="members may mix 2-D and 3-D models: write one 3-D graph (merge_volumetric); "
                         "score it with calibrate.py")
    ap.add_argument("--merge-only", action="store_true",
                    help="write the merged model without scoring it (compare candidates with "
                         "calibrate.py --validation-only before the test split is looked at)")
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.volumetric:
        merge_volumetric(args.models, args.out / "model.onnx")
        print(f"wrote {args.out / 'model.onnx'}; score it with calibrate.py --model {args.out / 'model.onnx'}")
        return
    merge(args.models, args.out / "model.onnx")
    if args.merge_only:
        print(f"wrote {args.out / 'model.onnx'}; score it with calibrate.py --model {args.out / 'model.onnx'}")
        return
    sess = ort.InferenceSession(str(args.out / "model.onnx"), providers=["CPUExecutionProvider"])
    files = sorted(train.data_dir().glob("*.mat"))
    _, val_f, test_f = train.split(files)
    res = {"members": [str(p) for p in args.models], "test": [f.name for f in test_f], "test_results": {}}
    for split_name, fs in (("validation", val_f), ("test", test_f)):
        scores = []
        for f in fs:
            img, gt = train.load(f)
            pred = predict(sess, img)
            d = train.dice_per_level(pred, gt)
            scores.append(float(np.mean(d)))
            if split_name == "test":
                res["test_results"][f.name] = {"dice": dict(zip(train.LEVELS, d)), "mean": float(np.mean(d)),
                                               "level_order_ok": train.level_order_ok(pred)}
        res[f"{split_name}_mean_dice"] = float(np.mean(scores))
    tr = res["test_results"].values()
    res["test_mean_dice"] = float(np.mean([v["mean"] for v in tr]))
    res["test_min_volume_dice"] = float(np.min([v["mean"] for v in tr]))
    res["test_mean_dice_per_level"] = {l: float(np.mean([v["dice"][l] for v in tr])) for l in train.LEVELS}
    (args.out / "metrics.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "test_results"}, indent=2))


if __name__ == "__main__":
    main()
