#!/usr/bin/env python3
"""Fixture and benchmark ONNX models for myonode's ONNX engine, plus the Python
side of the engine tests.

Models are built with the `onnx` helper API from fixed (seeded) NumPy weights;
none of them is trained. Nothing written here is committed to the repository:
tests generate the models into a temporary directory at test time.

Subcommands
  models OUTDIR          write fixture model directories (model.onnx + model.toml):
                           conv3d    3-D conv 1->2 ch logits, dynamic D/H/W (translation-equivariant)
                           conv2d    2-D conv 1->4, ReLU, conv 4->2 logits, dynamic H/W, mirroring TTA
                           conv2d-prob  conv2d + Softmax (probabilities), patch larger than the image
                           conv3d-labels conv3d + ArgMax (int64 label map), CT normalisation
                           conv3d-pp conv3d with largest-component + hole filling on label 1, spacing resampling
                           dixon     3-D conv with channels ["water", "fat"]
                           fixed     3-D conv with a fixed 8x8x8 input but a 16^3 patch in its manifest (invalid)
  bench OUTDIR           write the benchmark models (random weights, NOT trained):
                           unet2d    2-D U-Net, Musclesense size: 2 channels (water, fat), 256x256,
                                     5 levels 32-512 features, 2 convs/level -> ~7.8 M parameters
                           unet3d    3-D U-Net, nnU-Net 3d_fullres size: 1 channel, patch 128x128x128,
                                     6 levels 32-320 features, 2 convs/level -> ~31 M parameters
  run-ort MODEL IN.npy OUT.npy
                         run MODEL on IN with the onnxruntime Python package (CPU), write the first
                         output as float32
  reference MODELDIR VOLUME.npy SZ SY SX OUTDIR
                         NumPy reference of the whole analysis (normalise, resample, sliding window
                         with Gaussian weights and mirroring, resample back, argmax, post-processing)
                         on a (z, y, x) float32 volume with spacing (SZ, SY, SX) mm; writes
                         OUTDIR/model_input.npy (C,z,y,x), OUTDIR/model_scores.npy (K,z,y,x) and
                         OUTDIR/labels.npy (uint8, z,y,x)

Requires: numpy, onnx, onnxruntime (1.31.1 in CI).
"""
import math
import os
import sys
import tomllib
from collections import deque

import numpy as np


# --------------------------------------------------------------------------- model building
def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    return onnx, TensorProto, helper, numpy_helper


def save_model(path, nodes, inputs, outputs, inits, name):
    onnx, TensorProto, helper, numpy_helper = _onnx()
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="myonode-fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def tensor(name, shape):
    _, TensorProto, helper, _ = _onnx()
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def smoothing_conv(rng, cin, ndim):
    """Weights (2, cin, 3..) whose logit difference is a positive smoothing of the input."""
    k = (3,) * ndim
    w1 = np.abs(rng.normal(size=(cin,) + k)) + 0.1
    w1 /= w1.sum()
    w = np.stack([-w1 + 0.05 * rng.normal(size=w1.shape), w1])
    b = np.array([0.05, -0.05])
    return w, b


def conv2d_np(x, w, b):
    """(Cin, H, W) * (Cout, Cin, 3, 3) with zero padding 1 -> (Cout, H, W); used to centre a fixture's bias."""
    cin, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], h, wd))
    for o in range(w.shape[0]):
        for i in range(cin):
            for dy in range(3):
                for dx in range(3):
                    out[o] += w[o, i, dy, dx] * xp[i, dy:dy + h, dx:dx + wd]
        out[o] += b[o]
    return out


def write_manifest(path, text):
    with open(path, "w") as f:
        f.write(text)


LABEL_MUSCLE = """
[[labels]]
value = 1
name = "Muscle"
category = { value = "85756007", scheme = "SCT", meaning = "Tissue" }
type = { value = "91727004", scheme = "SCT", meaning = "Muscle" }
color = [200, 60, 60]
"""


def fixture_models(out):
    rng = np.random.RandomState(1234)
    # conv3d: 1 -> 2 logits, 3x3x3, SAME zero padding: translation-equivariant away from the border
    d = os.path.join(out, "conv3d"); os.makedirs(d, exist_ok=True)
    w, b = smoothing_conv(rng, 1, 3)
    _, _, helper, _ = _onnx()
    save_model(os.path.join(d, "model.onnx"),
               [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6, kernel_shape=[3, 3, 3])],
               [tensor("input", [1, 1, "D", "H", "W"])], [tensor("logits", [1, 2, "D", "H", "W"])],
               {"w": w, "b": b}, "conv3d")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "1.0"
description = "fixture: one 3-D convolution (fixed weights), not trained"
[input]
tensor = "input"
channels = ["any"]
dimensions = "3d"
spacing_mm = [0, 0, 0]
[normalization]
scheme = "zscore"
[inference]
patch_size = [8, 12, 10]
overlap = 0.5
[output]
tensor = "logits"
kind = "logits"
""" + LABEL_MUSCLE)

    # conv3d-pp: same network, resampling to another spacing, post-processing on
    d = os.path.join(out, "conv3d-pp"); os.makedirs(d, exist_ok=True)
    save_model(os.path.join(d, "model.onnx"),
               [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6, kernel_shape=[3, 3, 3])],
               [tensor("input", [1, 1, "D", "H", "W"])], [tensor("logits", [1, 2, "D", "H", "W"])],
               {"w": w, "b": b}, "conv3d_pp")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "1.0"
[input]
tensor = "input"
channels = ["any"]
dimensions = "3d"
spacing_mm = [1.5, 1.0, 1.25]
[normalization]
scheme = "zscore"
foreground_only = true
foreground_threshold = -0.5
[inference]
patch_size = [8, 16, 16]
overlap = 0.5
[output]
tensor = "logits"
kind = "logits"
""" + LABEL_MUSCLE.replace('color = [200, 60, 60]', 'color = [200, 60, 60]\nlargest_component = true\nfill_holes = true'))

    # conv3d-labels: the conv3d network followed by ArgMax: an int64 label map (1, 1, D, H, W)
    d = os.path.join(out, "conv3d-labels"); os.makedirs(d, exist_ok=True)
    save_model(os.path.join(d, "model.onnx"), [
        helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6, kernel_shape=[3, 3, 3]),
        helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=1),
    ], [tensor("input", [1, 1, "D", "H", "W"])],
        [helper.make_tensor_value_info("labels", _onnx()[1].INT64, [1, 1, "D", "H", "W"])],
        {"w": w, "b": b}, "conv3d_labels")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "1.0"
[input]
tensor = "input"
channels = ["ct"]
dimensions = "3d"
spacing_mm = [2.5, 0, 0]
[normalization]
scheme = "ct"
clip = [-150.0, 150.0]
offset = 20.0
scale = 60.0
[inference]
patch_size = [8, 12, 12]
overlap = 0.5
[output]
tensor = "labels"
kind = "labels"
""" + LABEL_MUSCLE)

    # conv2d: 1 -> 4 -> ReLU -> 2 logits
    d = os.path.join(out, "conv2d"); os.makedirs(d, exist_ok=True)
    w1 = rng.normal(size=(4, 1, 3, 3)) * 0.5
    b1 = rng.normal(size=4) * 0.1
    w2 = rng.normal(size=(2, 4, 3, 3)) * 0.5
    b2 = rng.normal(size=2) * 0.1
    # centre the class balance: shift b2[1] by the median logit difference on a smooth [0, 1] image
    yy, xx = np.meshgrid(np.linspace(0, 1, 40), np.linspace(0, 1, 40), indexing="ij")
    img = 0.5 + 0.5 * np.sin(7 * xx) * np.cos(5 * yy)
    h = np.maximum(0, conv2d_np(img[None], w1, b1))
    diff = conv2d_np(h, w2, b2)
    b2[1] -= np.median(diff[1] - diff[0])
    save_model(os.path.join(d, "model.onnx"), [
        helper.make_node("Conv", ["input", "w1", "b1"], ["h"], pads=[1] * 4, kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Conv", ["hr", "w2", "b2"], ["logits"], pads=[1] * 4, kernel_shape=[3, 3]),
    ], [tensor("input", [1, 1, "H", "W"])], [tensor("logits", [1, 2, "H", "W"])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, "conv2d")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "0.1"
[input]
tensor = "input"
channels = ["any"]
dimensions = "2d"
spacing_mm = [0, 1.1, 0.9]
[normalization]
scheme = "percentile"
lower = 1.0
upper = 99.0
[inference]
patch_size = [16, 16]
overlap = 0.25
mirroring = true
[output]
tensor = "logits"
kind = "logits"
""" + LABEL_MUSCLE)

    # conv2d-prob: the conv2d network followed by Softmax: probabilities; patch larger than the image
    d = os.path.join(out, "conv2d-prob"); os.makedirs(d, exist_ok=True)
    save_model(os.path.join(d, "model.onnx"), [
        helper.make_node("Conv", ["image", "w1", "b1"], ["h"], pads=[1] * 4, kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Conv", ["hr", "w2", "b2"], ["logits"], pads=[1] * 4, kernel_shape=[3, 3]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ], [tensor("image", [1, 1, "H", "W"])], [tensor("probs", [1, 2, "H", "W"])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, "conv2d_prob")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "0.1"
[input]
tensor = "image"
channels = ["any"]
dimensions = "2d"
spacing_mm = [0, 0, 0]
[normalization]
scheme = "percentile"
lower = 0.5
upper = 99.5
[inference]
patch_size = [48, 40]
[output]
tensor = "probs"
kind = "probabilities"
""" + LABEL_MUSCLE)

    # dixon: two input channels
    d = os.path.join(out, "dixon"); os.makedirs(d, exist_ok=True)
    w, b = smoothing_conv(rng, 2, 3)
    save_model(os.path.join(d, "model.onnx"),
               [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6, kernel_shape=[3, 3, 3])],
               [tensor("input", [1, 2, "D", "H", "W"])], [tensor("logits", [1, 2, "D", "H", "W"])],
               {"w": w, "b": b}, "dixon")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "1.0"
[input]
tensor = "input"
channels = ["water", "fat"]
dimensions = "3d"
spacing_mm = [0, 0, 0]
[normalization]
scheme = "zscore"
[inference]
patch_size = [8, 8, 8]
[output]
tensor = "logits"
kind = "logits"
""" + LABEL_MUSCLE)

    # fixed: graph input fixed at 8^3, manifest patch 16^3 -> must not load
    d = os.path.join(out, "fixed"); os.makedirs(d, exist_ok=True)
    w, b = smoothing_conv(rng, 1, 3)
    save_model(os.path.join(d, "model.onnx"),
               [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6, kernel_shape=[3, 3, 3])],
               [tensor("input", [1, 1, 8, 8, 8])], [tensor("logits", [1, 2, 8, 8, 8])],
               {"w": w, "b": b}, "fixed")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "1.0"
[input]
tensor = "input"
channels = ["any"]
dimensions = "3d"
spacing_mm = [0, 0, 0]
[inference]
patch_size = [16, 16, 16]
[output]
tensor = "logits"
kind = "logits"
""" + LABEL_MUSCLE)


def unet(ndim, cin, ncls, feats, rng, name):
    """U-Net with 2 x (conv3, InstanceNorm, LeakyReLU) per level, strided-conv downsampling,
    transposed-conv upsampling, skip concatenation. He-normal random weights (not trained)."""
    _, _, helper, _ = _onnx()
    nodes, inits = [], {}
    cnt = [0]

    def nid(p):
        cnt[0] += 1
        return f"{p}{cnt[0]}"

    def conv_block(x, ci, co, stride=1):
        w = nid("w"); b = nid("b"); s = nid("s"); t = nid("t")
        inits[w] = rng.normal(size=(co, ci) + (3,) * ndim) * math.sqrt(2.0 / (ci * 3 ** ndim))
        inits[b] = np.zeros(co)
        inits[s] = np.ones(co)
        inits[t] = np.zeros(co)
        y = nid("c"); z = nid("n"); r = nid("r")
        nodes.append(helper.make_node("Conv", [x, w, b], [y], pads=[1] * (2 * ndim), kernel_shape=[3] * ndim,
                                      strides=[stride] * ndim))
        nodes.append(helper.make_node("InstanceNormalization", [y, s, t], [z], epsilon=1e-5))
        nodes.append(helper.make_node("LeakyRelu", [z], [r], alpha=0.01))
        return r

    x, c = "input", cin
    skips = []
    for i, f in enumerate(feats):
        x = conv_block(x, c, f, stride=1 if i == 0 else 2)
        x = conv_block(x, f, f)
        c = f
        skips.append((x, f))
    for x_skip, f in reversed(skips[:-1]):
        w = nid("wt"); b = nid("bt"); u = nid("u"); cat = nid("cat")
        inits[w] = rng.normal(size=(c, f) + (2,) * ndim) * math.sqrt(2.0 / (c * 2 ** ndim))
        inits[b] = np.zeros(f)
        nodes.append(helper.make_node("ConvTranspose", [x, w, b], [u], kernel_shape=[2] * ndim, strides=[2] * ndim))
        nodes.append(helper.make_node("Concat", [u, x_skip], [cat], axis=1))
        x = conv_block(cat, 2 * f, f)
        x = conv_block(x, f, f)
        c = f
    w = nid("wo"); b = nid("bo")
    inits[w] = rng.normal(size=(ncls, c) + (1,) * ndim) * math.sqrt(1.0 / c)
    inits[b] = np.zeros(ncls)
    nodes.append(helper.make_node("Conv", [x, w, b], ["logits"], kernel_shape=[1] * ndim))
    sp = ["D", "H", "W"][-ndim:]
    nparams = sum(v.size for v in inits.values())
    return nodes, [tensor("input", [1, cin] + sp)], [tensor("logits", [1, ncls] + sp)], inits, nparams


def bench_models(out):
    rng = np.random.RandomState(7)
    labels = "".join(LABEL_MUSCLE.replace("value = 1", f"value = {v}").replace('"Muscle"', f'"Class {v}"')
                     for v in range(1, 4))
    for name, ndim, cin, feats, patch, chans, spacing in [
        ("unet2d", 2, 2, [32, 64, 128, 256, 512], [256, 256], '["water", "fat"]', "[0, 0, 0]"),
        ("unet3d", 3, 1, [32, 64, 128, 256, 320, 320], [128, 128, 128], '["any"]', "[0, 0, 0]"),
    ]:
        d = os.path.join(out, name); os.makedirs(d, exist_ok=True)
        nodes, ins, outs, inits, nparams = unet(ndim, cin, 4, feats, rng, name)
        save_model(os.path.join(d, "model.onnx"), nodes, ins, outs, inits, name)
        write_manifest(os.path.join(d, "model.toml"), f"""
[model]
version = "bench"
description = "benchmark U-Net with RANDOM weights ({nparams} parameters), not trained"
[input]
tensor = "input"
channels = {chans}
dimensions = "{ndim}d"
spacing_mm = {spacing}
[normalization]
scheme = "zscore"
[inference]
patch_size = {patch}
overlap = 0.5
[output]
tensor = "logits"
kind = "logits"
""" + labels)
        print(f"{name}: {nparams} parameters")


# --------------------------------------------------------------------------- running
_sessions = {}


def ort_session(path):
    import onnxruntime as ort
    if path not in _sessions:
        _sessions[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _sessions[path]


def run_ort(model, x, input_name=None, output_name=None):
    s = ort_session(model)
    input_name = input_name or s.get_inputs()[0].name
    out = s.run([output_name] if output_name else None, {input_name: x.astype(np.float32)})
    return out[0]


# --------------------------------------------------------------------------- NumPy reference
def normalize(v, n):
    v = v.astype(np.float32)
    scheme = n.get("scheme", "none")
    if scheme == "none":
        return v
    if scheme == "zscore":
        sel = v > n.get("foreground_threshold", 0.0) if n.get("foreground_only", False) else np.ones(v.shape, bool)
        if not sel.any():
            return v
        vals = v[sel].astype(np.float64)
        mean = vals.mean()
        std = max(math.sqrt(((vals - mean) ** 2).mean()), 1e-8)
        return ((v - np.float32(mean)) * np.float32(1.0 / std)).astype(np.float32)
    if scheme == "ct":
        lo, hi = n["clip"]
        return ((np.clip(v, lo, hi) - np.float32(n["offset"])) * np.float32(1.0 / n["scale"])).astype(np.float32)
    if scheme == "percentile":
        lo = np.float32(np.percentile(v, n["lower"]))
        hi = np.float32(np.percentile(v, n["upper"]))
        rng = max(float(hi - lo), 1e-8)
        return ((np.clip(v, lo, hi) - lo).astype(np.float64) / rng).astype(np.float32)
    raise ValueError(scheme)


def target_shape(shape, spacing, target):
    return tuple(max(1, int(math.floor(n * s / t + 0.5))) if t > 0 else n for n, s, t in zip(shape, spacing, target))


def resample_axis(a, axis, n_out):
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return (np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w).astype(np.float32)


def resample_linear(a, shape):
    for axis in (2, 1, 0):
        a = resample_axis(a, axis, shape[axis])
    return a


def window_starts(size, patch, overlap):
    if size <= patch:
        return [0]
    step = max(patch * (1 - overlap), 1.0)
    n = int(math.ceil((size - patch) / step)) + 1
    actual = (size - patch) / (n - 1)
    return [int(math.floor(actual * i + 0.5)) for i in range(n)]


def gaussian(patch):
    g = np.ones(patch, np.float64)
    for ax, n in enumerate(patch):
        c, sigma = n // 2, n / 8.0
        v = np.exp(-((np.arange(n) - c) ** 2) / (2 * sigma * sigma))
        shape = [1, 1, 1]
        shape[ax] = n
        g = g * v.reshape(shape)
    g = g.astype(np.float32)
    return g / g.max()


def components(mask, full26):
    nz, ny, nx = mask.shape
    comp = np.zeros(mask.shape, np.int64)
    sizes = [0]
    offs = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
            if (a, b, c) != (0, 0, 0) and (full26 or abs(a) + abs(b) + abs(c) == 1)]
    for z, y, x in zip(*np.nonzero(mask)):
        if comp[z, y, x]:
            continue
        cid = len(sizes)
        comp[z, y, x] = cid
        q = deque([(z, y, x)])
        size = 0
        while q:
            a, b, c = q.popleft()
            size += 1
            for da, db, dc in offs:
                p = (a + da, b + db, c + dc)
                if 0 <= p[0] < nz and 0 <= p[1] < ny and 0 <= p[2] < nx and mask[p] and not comp[p]:
                    comp[p] = cid
                    q.append(p)
        sizes.append(size)
    return comp, sizes


def class_weight_fixtures(out):
    """conv3d-pp-cw / conv2d-prob-cw: the conv3d-pp (logits) and conv2d-prob (probabilities)
    models with `[output] class_weights`, favouring the foreground and the background."""
    import shutil
    for src, dst, weights in (("conv3d-pp", "conv3d-pp-cw", "[0.25, 1.0]"), ("conv2d-prob", "conv2d-prob-cw", "[1.0, 0.6]")):
        d = os.path.join(out, dst)
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(out, src, "model.onnx"), os.path.join(d, "model.onnx"))
        with open(os.path.join(out, src, "model.toml")) as f:
            text = f.read()
        marker = 'kind = "logits"' if 'kind = "logits"' in text else 'kind = "probabilities"'
        write_manifest(os.path.join(d, "model.toml"), text.replace(marker, marker + "\nclass_weights = " + weights, 1))


def context_fixture(out):
    """conv2d-ctx: a 2.5D model, 3 input channels (slices z-1, z, z+1) -> 2 logits."""
    _, _, helper, _ = _onnx()
    rng = np.random.RandomState(77)
    d = os.path.join(out, "conv2d-ctx")
    os.makedirs(d, exist_ok=True)
    w = rng.normal(size=(2, 3, 3, 3)) * 0.4
    w[1, 0] += 0.6  # class 1 likes bright previous slices, dislikes bright next slices
    w[1, 2] -= 0.6
    b = np.array([0.0, 0.0])
    save_model(os.path.join(d, "model.onnx"),
               [helper.make_node("Conv", ["image", "w", "b"], ["logits"], pads=[1] * 4, kernel_shape=[3, 3])],
               [tensor("image", [1, 3, "H", "W"])], [tensor("logits", [1, 2, "H", "W"])],
               {"w": w, "b": b}, "conv2d_ctx")
    write_manifest(os.path.join(d, "model.toml"), """
[model]
version = "0.1"
[input]
tensor = "image"
channels = ["any"]
dimensions = "2d"
spacing_mm = [0, 0, 0]
context_slices = 1
[normalization]
scheme = "zscore"
[inference]
patch_size = [16, 16]
overlap = 0.5
[output]
tensor = "logits"
kind = "logits"
""" + LABEL_MUSCLE)


def reference(model_dir, vol_path, spacing, outdir):
    with open(os.path.join(model_dir, "model.toml"), "rb") as f:
        m = tomllib.load(f)
    model = os.path.join(model_dir, m["model"].get("file", "model.onnx"))
    vol = np.load(vol_path).astype(np.float32)
    two_d = m["input"]["dimensions"] == "2d"
    target = list(m["input"]["spacing_mm"])
    if two_d:
        target[0] = 0
    mshape = target_shape(vol.shape, spacing, target)
    x = normalize(vol, m.get("normalization", {"scheme": "none"}))
    x = resample_linear(x, mshape)[None]  # (C=1, z, y, x)
    n = m["input"].get("context_slices", 0)
    if two_d and n:  # 2.5D: channel j holds slice clamp(z - n + j)
        k = np.arange(x.shape[1])
        x = np.stack([x[0][np.clip(k + d, 0, x.shape[1] - 1)] for d in range(-n, n + 1)])
    np.save(os.path.join(outdir, "model_input.npy"), x)

    ps = m["inference"]["patch_size"]
    patch = (1, ps[0], ps[1]) if two_d else tuple(ps)
    overlap = m["inference"].get("overlap", 0.5)
    mirror = m["inference"].get("mirroring", False)
    mirror_axes = ([2, 3] if two_d else [1, 2, 3]) if mirror else []
    C = x.shape[0]
    size = x.shape[1:]
    psize = tuple(max(s, p) for s, p in zip(size, patch))
    xp = np.zeros((C,) + psize, np.float32)
    xp[:, :size[0], :size[1], :size[2]] = x
    g = gaussian(patch)
    acc = None
    wsum = np.zeros(psize, np.float32)
    for z0 in window_starts(psize[0], patch[0], overlap):
        for y0 in window_starts(psize[1], patch[1], overlap):
            for x0 in window_starts(psize[2], patch[2], overlap):
                sl = (slice(z0, z0 + patch[0]), slice(y0, y0 + patch[1]), slice(x0, x0 + patch[2]))
                win = xp[(slice(None),) + sl]
                outs = []
                combos = 1 << len(mirror_axes)
                for mask in range(combos):
                    axes = tuple(a for i, a in enumerate(mirror_axes) if mask & (1 << i))
                    w = np.flip(win, axes) if axes else win
                    t = w.reshape((1, C, patch[1], patch[2])) if two_d else w[None]
                    o = run_ort(model, np.ascontiguousarray(t), m["input"]["tensor"], m["output"]["tensor"])
                    if m["output"]["kind"] == "labels":
                        k = max(l["value"] for l in m["labels"]) + 1
                        lab = np.rint(o.reshape(patch)).astype(np.int64)
                        o = np.stack([(lab == c) for c in range(k)]).astype(np.float32)
                    else:
                        o = o.reshape((o.shape[1],) + patch)
                    outs.append(np.flip(o, axes) if axes else o)
                o = outs[0]
                for extra in outs[1:]:
                    o = o + extra
                o = o * np.float32(1.0 / combos)
                if acc is None:
                    acc = np.zeros((o.shape[0],) + psize, np.float32)
                acc[(slice(None),) + sl] += o * g
                wsum[sl] += g
    scores = (acc / wsum)[:, :size[0], :size[1], :size[2]]
    np.save(os.path.join(outdir, "model_scores.npy"), scores)
    cw = m["output"].get("class_weights")
    if cw is not None:  # decision weights: + ln w (logits) or * w (probabilities), per class
        w = np.asarray(cw, np.float64)[:, None, None, None]
        if m["output"]["kind"] == "logits":
            scores = scores + np.log(w).astype(np.float32)
        else:
            scores = scores * w.astype(np.float32)
    back = np.stack([resample_linear(s, vol.shape) for s in scores])
    lab = np.argmax(back, axis=0).astype(np.uint8)
    valid = {l["value"] for l in m["labels"]}
    lab[~np.isin(lab, list(valid))] = 0
    for l in m["labels"]:
        v = l["value"]
        if l.get("largest_component", False):
            comp, sizes = components(lab == v, True)
            if len(sizes) > 2:
                keep = int(np.argmax(sizes[1:])) + 1
                lab[(comp != 0) & (comp != keep)] = 0
        if l.get("fill_holes", False):
            comp, sizes = components(lab != v, False)
            border = set(np.unique(np.concatenate([
                comp[0].ravel(), comp[-1].ravel(), comp[:, 0].ravel(), comp[:, -1].ravel(),
                comp[:, :, 0].ravel(), comp[:, :, -1].ravel()])))
            hole = (comp != 0) & ~np.isin(comp, list(border)) & (lab == 0)
            lab[hole] = v
    np.save(os.path.join(outdir, "labels.npy"), lab)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "models":
        fixture_models(argv[2])
        class_weight_fixtures(argv[2])
        context_fixture(argv[2])
    elif cmd == "bench":
        bench_models(argv[2])
    elif cmd == "run-ort":
        np.save(argv[4], run_ort(argv[2], np.load(argv[3])).astype(np.float32))
    elif cmd == "reference":
        reference(argv[2], argv[3], [float(v) for v in argv[4:7]], argv[7])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
