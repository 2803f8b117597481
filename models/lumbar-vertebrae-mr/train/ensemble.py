#!/usr/bin/env python3
"""Average the logits of several trained ONNX models into one ONNX graph and score it.

Usage: ``python ensemble.py --out DIR MODEL.onnx [MODEL.onnx ...]`` (each from ``train.py``,
same split). Writes ``DIR/model.onnx`` (input ``image``, output ``logits`` = mean of the
members' logits) and ``DIR/metrics.json`` with the held-out test scores computed exactly as
``train.py`` does (2 mm inference, bilinear upsampling of logits, argmax, largest component).
"""
import argparse
import json
import os
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


def predict(sess, img):
    xs, _ = train.to_slices(img, np.zeros(img.shape, np.int64))  # (n, channels, y, x) since --context
    lg = sess.run(None, {"image": np.ascontiguousarray(xs, np.float32)})[0]
    lg = F.interpolate(torch.from_numpy(lg), scale_factor=2, mode="bilinear", align_corners=False)
    return train.largest_component_per_label(lg.argmax(1).permute(1, 2, 0).numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    merge(args.models, args.out / "model.onnx")
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
