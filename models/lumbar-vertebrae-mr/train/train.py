#!/usr/bin/env python3
"""Train the lumbar vertebral body segmentation model (L1-L5) on water-fat MRI.

Data: ``$MYONODE_DATA/training/lumbar-vertebrae-mr/NN.mat`` (MyoSegmenTUM spine as packaged by
fastcleverseg; see ``../shared/data/README.md``): ``I`` uint8 224x224x77 (axis 0 head->foot,
axis 1 anterior->posterior, axis 2 left-right; ~1 mm isotropic), ``GT`` 0 = background, 1..5 = L1..L5.

Model: a compact 2-D U-Net on sagittal slices ``I[:, :, k]`` resampled to 2 mm in-plane (112x112,
2x2 average pooling = linear resampling with centre-aligned grids), input z-scored over the whole
volume, output 6-class logits. Split by volume with a fixed seed; the split, the scores and the
time are written to ``metrics.json`` for the model card.

Usage: ``python train.py --out DIR [--minutes 30] [--smoke]``.
"""
import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import scipy.io
import scipy.ndimage as ndi
import torch
import torch.nn as nn
import torch.nn.functional as F

from scoring import dice_per_level  # noqa: F401 (train.dice_per_level is used by the other tools)

NUM_CLASSES = 6
LEVELS = ["L1", "L2", "L3", "L4", "L5"]


def data_dir() -> Path:
    root = Path(os.environ.get("MYONODE_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
    return root / "training" / "lumbar-vertebrae-mr"


def load(path: Path):
    m = scipy.io.loadmat(path)
    return m["I"].astype(np.float32), m["GT"].astype(np.int64)


def split(files, seed=20261122):
    files = sorted(files)
    rng = random.Random(seed)
    rng.shuffle(files)
    return files[:30], files[30:35], files[35:40]


def zscore(vol):
    return (vol - vol.mean()) / max(float(vol.std()), 1e-6)


CONTEXT = 0  # neighbouring sagittal slices on each side fed as extra channels (2.5D); set by --context


def with_context(x, n):
    """Slices (S,H,W) -> (S, 2n+1, H, W): channel j of slice k is slice clamp(k - n + j) (edges repeated)."""
    k = np.arange(x.shape[0])
    return np.stack([x[np.clip(k + d, 0, x.shape[0] - 1)] for d in range(-n, n + 1)], axis=1)


def to_slices(img, lab):
    """Volume (224,224,77) -> sagittal slices at 2 mm: images (77, 2*CONTEXT+1, 112, 112) float, labels (77,112,112)."""
    x = torch.from_numpy(zscore(img)).permute(2, 0, 1)[:, None]  # (77,1,224,224)
    x = with_context(F.avg_pool2d(x, 2)[:, 0].numpy(), CONTEXT)
    # labels: majority over each 2x2 block (mode), ties broken to the higher label
    y = torch.from_numpy(lab).permute(2, 0, 1)
    onehot = F.one_hot(y, NUM_CLASSES).permute(0, 3, 1, 2).float()
    y2 = F.avg_pool2d(onehot, 2).argmax(1)
    return x, y2.numpy()


class Block(nn.Sequential):
    """Two 3x3 (3x3x3 with ``nd=3``) convolutions, each with instance norm and LeakyReLU."""

    def __init__(self, cin, cout, nd=2):
        conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if nd == 2 else (nn.Conv3d, nn.InstanceNorm3d)
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=False), norm(cout, affine=True), nn.LeakyReLU(0.01),
            conv(cout, cout, 3, padding=1, bias=False), norm(cout, affine=True), nn.LeakyReLU(0.01),
        )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``depth`` levels of ``Block``s, max pooling 2, transposed-
    convolution upsampling and skip connections; 2-D (N,C,H,W) or, with ``nd=3``, 3-D (N,C,D,H,W)."""

    def __init__(self, base=16, depth=5, cin=1, ncls=NUM_CLASSES, nd=2):
        super().__init__()
        self.nd = nd
        upconv = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
        chs = [base * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        c = cin
        for ch in chs:
            self.down.append(Block(c, ch, nd))
            c = ch
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for ch in reversed(chs[:-1]):
            self.upconv.append(upconv(c, ch, 2, stride=2))
            self.up.append(Block(2 * ch, ch, nd))
            c = ch
        self.head = (nn.Conv2d if nd == 2 else nn.Conv3d)(c, ncls, 1)

    def forward(self, x):
        pool = F.max_pool2d if self.nd == 2 else F.max_pool3d
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = pool(x, 2)
        for upc, blk in zip(self.upconv, self.up):
            x = upc(x)
            x = blk(torch.cat([x, skips.pop()], 1))
        return self.head(x)


def dice_loss(logits, y):
    """1 - mean soft Dice of the foreground classes over the batch; logits (N,C,...), labels (N,...)."""
    p = logits.softmax(1)
    oh = F.one_hot(y, NUM_CLASSES).movedim(-1, 1).float()
    dims = (0,) + tuple(range(2, logits.ndim))
    inter = (p * oh).sum(dims)
    den = p.sum(dims) + oh.sum(dims)
    return 1 - ((2 * inter + 1) / (den + 1))[1:].mean()


def predict_volume(model, img):
    """Full-resolution label volume (224,224,77) for one volume: model at 2 mm, logits upsampled bilinearly."""
    xs, _ = to_slices(img, np.zeros(img.shape, np.int64))
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(xs), 16):
            lg = model(torch.from_numpy(xs[i:i + 16]))
            lg = F.interpolate(lg, scale_factor=2, mode="bilinear", align_corners=False)
            out.append(lg.argmax(1))
    lab = torch.cat(out).permute(1, 2, 0).numpy()
    return largest_component_per_label(lab)


def largest_component_per_label(lab):
    out = np.zeros_like(lab)
    for v in range(1, NUM_CLASSES):
        cc, n = ndi.label(lab == v)
        if n == 0:
            continue
        sizes = ndi.sum(np.ones_like(cc), cc, index=range(1, n + 1))
        out[cc == (1 + int(np.argmax(sizes)))] = v
    return out




def level_order_ok(pred):
    """Centroids along head->foot (axis 0) must increase L1 < L2 < ... < L5 and all levels be present."""
    zs = []
    for v in range(1, NUM_CLASSES):
        idx = np.argwhere(pred == v)
        if len(idx) == 0:
            return False
        zs.append(idx[:, 0].mean())
    return all(a < b for a, b in zip(zs, zs[1:]))


def strong_augment(x, y):
    """Extra augmentation for ``--aug strong``; x (B,C,H,W) z-scored slices, y (B,H,W) labels.

    - scaling 0.9-1.1 and rotation +-10 degrees about the slice centre (bilinear image, nearest labels): covers the
      +-5 % spacing uncertainty and patient tilt;
    - a smooth multiplicative bias field exp(0.25 g), g bilinearly upsampled 4x4 Gaussian noise: coil shading;
    - gamma 0.7-1.5 on the per-slice min-max range, re-mapped to the slice's mean and std;
    - with probability 0.3, 1-3 dark elliptical blotches (signal x 0.2-0.6, radii 3-10 px = 6-20 mm) inside the
      vertebral bodies: inhomogeneous marrow signal (cf. Cutout, DeVries & Taylor 2017, arXiv:1708.04552), labels kept.
    """
    b, _, h, w = x.shape
    ang = torch.empty(b).uniform_(-np.pi / 18, np.pi / 18)
    sc = torch.empty(b).uniform_(0.9, 1.1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) / sc
    theta[:, 0, 1] = -torch.sin(ang) / sc
    theta[:, 1, 0] = torch.sin(ang) / sc
    theta[:, 1, 1] = torch.cos(ang) / sc
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    lo = x.amin((1, 2, 3), keepdim=True)
    x = F.grid_sample(x - lo, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + lo
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    field = torch.exp(0.25 * F.interpolate(torch.randn(b, 1, 4, 4), size=(h, w), mode="bilinear", align_corners=False))
    mean, std = x.mean((1, 2, 3), keepdim=True), x.std((1, 2, 3), keepdim=True)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    u = ((x - lo) / (hi - lo + 1e-6)) ** torch.empty(b, 1, 1, 1).uniform_(0.7, 1.5)
    x = (u - u.mean((1, 2, 3), keepdim=True)) / (u.std((1, 2, 3), keepdim=True) + 1e-6) * std + mean
    x = (x - lo) * field + lo
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for i in range(b):
        fg = torch.nonzero(y[i] > 0)
        if len(fg) == 0 or np.random.rand() > 0.3:
            continue
        for _ in range(np.random.randint(1, 4)):
            cy, cx = fg[np.random.randint(len(fg))].tolist()
            ry, rx = np.random.uniform(3, 10, 2)
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            f = float(np.random.uniform(0.2, 0.6))
            x[i, :, m] = lo[i, 0, 0, 0] + (x[i, :, m] - lo[i, 0, 0, 0]) * f
    return x, y


def shift_pad(x, y, max_rows, max_cols):
    """Translate each slice of x (B,C,H,W) / y (B,H,W) by its own random offset (rows up to
    ``max_rows`` px head-foot, columns up to ``max_cols`` px), filling what comes in with the
    slice's minimum (no signal) and background label: a field of view placed elsewhere, without
    the wrap-around of ``torch.roll`` (which puts the sacrum above L1 for large shifts).

    With rows up to 24 px (48 mm, more than one vertebral level of ~36 mm), where a level sits in
    the image no longer tells which level it is; the model has to count from the anatomy (sacrum).
    """
    b, _, h, w = x.shape
    xp = F.pad(x, (max_cols, max_cols, max_rows, max_rows), value=0.0)
    lo = x.amin((1, 2, 3))
    yp = F.pad(y, (max_cols, max_cols, max_rows, max_rows), value=0)
    mask = F.pad(torch.ones(b, 1, h, w), (max_cols, max_cols, max_rows, max_rows), value=0.0)
    xp = xp * mask + (1 - mask) * lo[:, None, None, None]
    out_x, out_y = torch.empty_like(x), torch.empty_like(y)
    for i in range(b):
        r = max_rows + int(np.random.randint(-max_rows, max_rows + 1))
        c = max_cols + int(np.random.randint(-max_cols, max_cols + 1))
        out_x[i] = xp[i, :, r:r + h, c:c + w]
        out_y[i] = yp[i, r:r + h, c:c + w]
    return out_x, out_y


def load_onnx_weights(model, path: Path):
    """Copy the initializers of an ONNX model exported by this script (same names as the state dict) into `model`."""
    import onnx
    from onnx import numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = model.state_dict()
    missing = sorted(set(state) - set(inits))
    if missing:
        raise SystemExit(f"--init {path}: no weights for {missing[:5]} (different architecture?)")
    model.load_state_dict({k: torch.from_numpy(inits[k].copy()).reshape(v.shape) for k, v in state.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--smoke", action="store_true", help="a few steps on two volumes; checks loss falls and export loads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--context", type=int, default=0,
                    help="2.5D: neighbouring sagittal slices on each side as extra input channels")
    ap.add_argument("--steps", type=int, default=0,
                    help="train for this many steps (learning-rate schedule over steps) instead of a time budget")
    ap.add_argument("--aug", choices=["basic", "strong"], default="basic",
                    help="basic: intensity scale/shift + translation; strong: also scaling/rotation, a smooth "
                         "multiplicative bias field, gamma and dark blotches (atypical marrow signal)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from the weights of an exported model.onnx of the same architecture (fine-tuning)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 0)")
    ap.add_argument("--shift-rows", type=int, default=8,
                    help="head-foot translation range in px at 2 mm (default 8 = 16 mm)")
    ap.add_argument("--shift-mode", choices=["roll", "pad"], default="roll",
                    help="roll: one offset per batch, wrapped around (1.0.0/1.1.0 recipe); pad: one offset per "
                         "slice, the uncovered border filled with no signal and background (see shift_pad)")
    ap.add_argument("--val-every", type=int, default=150, help="validate (and checkpoint) every N steps")
    ap.add_argument("--cv-fold", type=int, default=None,
                    help="cross-validation: hold out training volumes train[K::--cv-folds] (recorded as cv_heldout in "
                         "metrics.json) and train on the rest; the test split is not read")
    ap.add_argument("--cv-folds", type=int, default=3)
    ap.add_argument("--refit", action="store_true",
                    help="train on the training and validation volumes together (35) and keep the final weights: "
                         "no validation, no checkpoint selection (the recipe's settings were chosen on validation "
                         "before; MODEL_CARD.md, 1.3.0 attempt)")
    args = ap.parse_args()
    global CONTEXT
    CONTEXT = args.context
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    files = sorted(data_dir().glob("*.mat"))
    if len(files) != 40:
        raise SystemExit(f"expected 40 volumes in {data_dir()}, found {len(files)}")
    train_f, val_f, test_f = split(files)
    heldout_f = []
    if args.cv_fold is not None:
        heldout_f = train_f[args.cv_fold::args.cv_folds]
        train_f = [f for f in train_f if f not in heldout_f]
        test_f = []
    if args.refit:
        if args.cv_fold is not None:
            raise SystemExit("--refit and --cv-fold exclude each other")
        train_f, val_f = train_f + val_f, []
    if args.smoke:
        train_f, val_f, test_f = train_f[:2], val_f[:1], []
    t0 = time.time()
    X, Y = [], []
    for f in train_f:
        x, y = to_slices(*load(f))
        X.append(x)
        Y.append(y)
    X = torch.from_numpy(np.concatenate(X))
    Y = torch.from_numpy(np.concatenate(Y))
    fg = (Y > 0).flatten(1).any(1)
    print(f"train slices {len(X)} ({int(fg.sum())} with vertebrae); load {time.time() - t0:.0f}s", flush=True)
    val = [load(f) for f in val_f]

    model = UNet(base=args.base, cin=2 * CONTEXT + 1)
    nparams = sum(p.numel() for p in model.parameters())
    if args.init is not None:
        load_onnx_weights(model, args.init)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = 60 if args.smoke else args.minutes * 60
    max_steps = 12 if args.smoke else (args.steps or 10 ** 9)
    if args.steps and not args.smoke:
        budget = 10 ** 9  # step budget: the schedule follows steps, whatever the machine's load
    bs = 16
    step, best, best_state, history, losses = 0, -1.0, None, [], []
    t_train = time.time()
    fg_idx = torch.nonzero(fg).flatten()
    all_idx = torch.arange(len(X))
    while time.time() - t_train < budget and step < max_steps:
        model.train()
        # 75 % slices with vertebrae, 25 % any slice
        idx = torch.cat([fg_idx[torch.randint(len(fg_idx), (bs * 3 // 4,))], all_idx[torch.randint(len(X), (bs // 4,))]])
        x, y = X[idx].clone(), Y[idx].clone()
        # augmentation: intensity scale/shift, in-plane translation (default up to 8 px = 16 mm, wrapped)
        x = x * (1 + 0.1 * torch.randn(len(x), 1, 1, 1)) + 0.1 * torch.randn(len(x), 1, 1, 1)
        if args.shift_mode == "roll":
            dy, dx = np.random.randint(-8, 9, 2)  # the 1.0.0 draw, kept for reproducibility
            dy = dy * args.shift_rows // 8
            x = torch.roll(x, (int(dy), int(dx)), (2, 3))
            y = torch.roll(y, (int(dy), int(dx)), (1, 2))
        else:
            x, y = shift_pad(x, y, args.shift_rows, 8)
        if args.aug == "strong":
            x, y = strong_augment(x, y)
        progress = step / max_steps if args.steps and not args.smoke else (time.time() - t_train) / budget
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits, y) + dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        step += 1
        if val and (step % args.val_every == 0 or args.smoke and step % 4 == 0):
            scores = [dice_per_level(predict_volume(model, im), gt) for im, gt in val]
            order = [level_order_ok(predict_volume(model, im)) for im, _ in val] if not args.smoke else []
            mean = float(np.mean(scores))
            # checkpoint by mean foreground Dice, penalising volumes whose level order is wrong
            sel = mean - 0.1 * sum(not o for o in order)
            history.append({"step": step, "minutes": (time.time() - t_train) / 60, "val_dice": mean,
                            "val_order_ok": order, "loss": float(np.mean(losses[-50:]))})
            print(json.dumps(history[-1]), flush=True)
            if sel > best:
                best, best_state = sel, {k: v.clone() for k, v in model.state_dict().items()}
    train_minutes = (time.time() - t_train) / 60
    if best_state is not None:
        model.load_state_dict(best_state)

    results = {"split_seed": 20261122, "train": [f.name for f in train_f], "validation": [f.name for f in val_f],
               "test": [f.name for f in test_f], "parameters": nparams, "steps": step,
               "train_minutes": train_minutes, "history": history, "torch": torch.__version__,
               "context_slices": CONTEXT, "input_channels": 2 * CONTEXT + 1,
               "augmentation": args.aug, "seed": args.seed,
               "init": str(args.init) if args.init else None, "peak_lr": args.lr,
               "shift_rows": args.shift_rows, "shift_mode": args.shift_mode,
               "cv_heldout": [f.name for f in heldout_f], "refit": args.refit}
    per_volume = {}
    for f in test_f:
        img, gt = load(f)
        pred = predict_volume(model, img)
        d = dice_per_level(pred, gt)
        per_volume[f.name] = {"dice": dict(zip(LEVELS, d)), "mean": float(np.mean(d)), "level_order_ok": level_order_ok(pred)}
    results["test_results"] = per_volume
    if per_volume:
        allm = [v["mean"] for v in per_volume.values()]
        results["test_mean_dice"] = float(np.mean(allm))
        results["test_min_volume_dice"] = float(np.min(allm))
        results["test_mean_dice_per_level"] = {l: float(np.mean([v["dice"][l] for v in per_volume.values()])) for l in LEVELS}

    # export: input (N,2*context+1,H,W) float32 z-scored slice at 2 mm, output (N,6,H,W) logits; H, W multiples of 16
    cin = 2 * CONTEXT + 1
    export(model, args.out, (2, cin, 112, 112), {0: "n", 2: "h", 3: "w"}, results, losses, args.smoke)


def export(model, out: Path, probe_shape, dynamic, results, losses, smoke):
    """Export `model` to ``out/model.onnx`` (opset 17, input ``image``, output ``logits``, axes
    `dynamic` of both named), check ONNX Runtime against PyTorch on a random input of
    `probe_shape` (max abs difference into `results`), write ``out/metrics.json``; with `smoke`,
    assert that the loss fell and the export matches."""
    model.eval()
    onnx_path = out / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, *probe_shape[1:]), onnx_path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": dynamic, "logits": dynamic}, opset_version=17, dynamo=False)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probe = torch.randn(*probe_shape)
    with torch.no_grad():
        diff = float(np.abs(sess.run(None, {"image": probe.numpy()})[0] - model(probe).numpy()).max())
    results["onnx_max_abs_diff_vs_torch"] = diff
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("history", "train", "test_results")}, indent=2))
    if smoke:
        first, last = np.mean(losses[:3]), np.mean(losses[-3:])
        assert last < first, f"smoke: loss did not fall ({first:.3f} -> {last:.3f})"
        assert diff < 1e-3, f"smoke: ONNX export differs from torch by {diff}"
        print(f"smoke OK: loss {first:.3f} -> {last:.3f}, ONNX max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
