#!/usr/bin/env python3
"""Train a 3-D U-Net for the lumbar vertebral bodies (L1-L5) on water-fat MRI.

Same data, split, metrics and checkpoint rule as ``train.py`` (which trains the 2-D sagittal
model); what differs is that the network sees the whole volume at once, so the lateral extent of
a vertebral body (across sagittal slices) and the order of the levels are learnt in 3-D.

Grid (identical to what the node feeds a 3-D model, ``src/segment/onnx``, and to the 2-D model's
grid, so both can be averaged in one graph): the volume in the node's axis order (z = sagittal
slice = data axis 2, left-right; y = data axis 0, head->foot; x = data axis 1,
anterior->posterior), z-scored over the whole volume, linearly resampled in-plane with
centre-aligned grids (``F.interpolate(..., align_corners=False)``, the node's ``resample_linear``
convention; from 224 to 112 this is 2x2 averaging) to 77x112x112 at 1x2x2 mm, zero-padded at the
high end of z to the patch 80x112x112. The network halves z itself (average pooling) and works
at 2 mm isotropic; its last layer interpolates z back, so the output is 6-class logits of the
input's shape. The node crops the padding, resamples the logits linearly back to the source
grid, adds ln(class weight) and takes the argmax, then keeps the largest component per label,
as ``predict_volume`` here does.

Usage: ``python train3d.py --out DIR [--steps N] [--base 16] [--smoke]``
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import train

NUM_CLASSES = train.NUM_CLASSES
GRID = (77, 112, 112)  # model grid (z, y, x) at 1x2x2 mm of a 77x224x224 volume
PATCH = (80, 112, 112)  # patch: z padded to a multiple of 16 (z halved, then three poolings)


def to_model_grid(img, lab=None):
    """Data volume (224 HF, 224 AP, 77 LR) -> z-scored image (77, 112, 112) float32 in (z=LR, y=HF,
    x=AP) at 1x2x2 mm, and the labels on that grid (linear resampling of the one-hot labels, argmax)."""
    x = torch.from_numpy(train.zscore(img)).permute(2, 0, 1)[None, None]  # (1,1,77,224,224)
    x = F.interpolate(x, size=GRID, mode="trilinear", align_corners=False)[0, 0]
    if lab is None:
        return x.numpy(), None
    oh = F.one_hot(torch.from_numpy(lab).permute(2, 0, 1), NUM_CLASSES).permute(3, 0, 1, 2)[None].float()
    y = F.interpolate(oh, size=GRID, mode="trilinear", align_corners=False)[0].argmax(0)
    return x.numpy(), y.numpy()


def pad_z(x, value=0):
    """Zero-pad (..., 77, H, W) at the high end of z to 80, as the node pads a volume smaller than the patch."""
    return F.pad(x, (0, 0, 0, 0, 0, PATCH[0] - x.shape[-3]), value=value)


class UNet3D(train.UNet):
    """3-D U-Net (``train.UNet`` with ``nd=3``, ``depth`` levels) at 2 mm isotropic behind a z average
    pooling: input (N,1,80,112,112) at 1x2x2 mm, pooled to (N,1,40,112,112); logits linearly
    interpolated back along z (centre-aligned): output (N,6,80,112,112)."""

    def __init__(self, base=16, depth=4):
        super().__init__(base=base, depth=depth, nd=3)

    def forward(self, x):
        x = super().forward(F.avg_pool3d(x, (2, 1, 1)))
        return F.interpolate(x, scale_factor=(2.0, 1.0, 1.0), mode="trilinear", align_corners=False)


def logits_full_res(run, img):
    """Logits (6, 224, 224, 77) in data axis order for one volume: `run` maps the padded model input
    (1,1,80,112,112) to logits; padding cropped, linear upsampling in-plane to 77x224x224, axes back."""
    x, _ = to_model_grid(img)
    lg = run(pad_z(torch.from_numpy(x))[None, None])[:, :, : GRID[0]]
    lg = F.interpolate(lg, size=(img.shape[2], img.shape[0], img.shape[1]), mode="trilinear", align_corners=False)
    return lg[0].permute(0, 2, 3, 1).numpy()  # (6, HF, AP, LR)


def predict_volume(model, img, background_weight=1.0):
    model.eval()
    with torch.no_grad():
        lg = logits_full_res(model, img)
    lg[0] += np.float32(np.log(background_weight))
    return train.largest_component_per_label(lg.argmax(0))


def augment(x, y):
    """x (B,1,77,112,112) z-scored, y (B,77,112,112): intensity scale/shift; translation up to 8 voxels
    (16 mm) in y and x and 4 slices (4 mm) in z (wrap-around, as train.py); left-right mirroring (p = 0.5)."""
    x = x * (1 + 0.1 * torch.randn(len(x), 1, 1, 1, 1)) + 0.1 * torch.randn(len(x), 1, 1, 1, 1)
    dz = np.random.randint(-4, 5)
    dy, dx = np.random.randint(-8, 9, 2)
    x = torch.roll(x, (int(dz), int(dy), int(dx)), (2, 3, 4))
    y = torch.roll(y, (int(dz), int(dy), int(dx)), (1, 2, 3))
    flip = torch.rand(len(x)) < 0.5
    x[flip] = x[flip].flip(2)
    y[flip] = y[flip].flip(1)
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="a few steps on two volumes; checks loss falls and export loads")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    files = sorted(train.data_dir().glob("*.mat"))
    if len(files) != 40:
        raise SystemExit(f"expected 40 volumes in {train.data_dir()}, found {len(files)}")
    train_f, val_f, test_f = train.split(files)
    steps = args.steps
    if args.smoke:
        train_f, val_f, test_f, steps = train_f[:2], val_f[:1], [], 8
    t0 = time.time()
    X, Y = zip(*(to_model_grid(*train.load(f)) for f in train_f))
    X, Y = torch.from_numpy(np.stack(X))[:, None], torch.from_numpy(np.stack(Y))
    print(f"train volumes {len(X)} on grid {tuple(X.shape[2:])}; load {time.time() - t0:.0f}s", flush=True)
    val = [train.load(f) for f in val_f]

    model = UNet3D(base=args.base)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    step, best, best_state, history, losses = 0, -1.0, None, [], []
    t_train = time.time()
    while step < steps:
        model.train()
        idx = torch.randint(len(X), (args.batch,))
        x, y = augment(X[idx].clone(), Y[idx].clone())
        x, y = pad_z(x), pad_z(y)
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits, y) + train.dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % args.val_every == 0 or step == steps or args.smoke and step % 4 == 0:
            preds = [predict_volume(model, im) for im, _ in val]
            scores = [train.dice_per_level(p, gt) for p, (_, gt) in zip(preds, val)]
            order = [train.level_order_ok(p) for p in preds]
            mean = float(np.mean(scores))
            sel = mean - 0.1 * sum(not o for o in order)
            history.append({"step": step, "minutes": (time.time() - t_train) / 60, "val_dice": mean,
                            "val_volume_dice": [float(np.mean(s)) for s in scores],
                            "val_order_ok": order, "loss": float(np.mean(losses[-50:]))})
            print(json.dumps(history[-1]), flush=True)
            if sel > best:
                best, best_state = sel, {k: v.clone() for k, v in model.state_dict().items()}
                torch.save(best_state, args.out / "best.pt")
    train_minutes = (time.time() - t_train) / 60
    model.load_state_dict(best_state)

    results = {"kind": "3d", "split_seed": 20261122, "train": [f.name for f in train_f],
               "validation": [f.name for f in val_f], "test": [f.name for f in test_f], "parameters": nparams,
               "steps": step, "batch": args.batch, "base": args.base, "train_minutes": train_minutes,
               "history": history, "torch": torch.__version__, "seed": args.seed, "peak_lr": args.lr,
               "grid": GRID, "patch": PATCH}
    # export: input (N,1,80,112,112) z-scored volume at 1x2x2 mm (z padded), output (N,6,80,112,112) logits
    train.export(model, args.out, (1, 1, *PATCH), {0: "n"}, results, losses, args.smoke)

if __name__ == "__main__":
    main()
