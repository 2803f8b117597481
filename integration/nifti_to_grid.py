#!/usr/bin/env python3
"""Put a NIfTI label map on the grid of a DICOM series, exactly (no interpolation).

Usage:
    nifti_to_grid.py LABELS.nii.gz --source-dir DIR --out LABELS.npy [--names NAMES.json]

Every pixel centre of every source slice (single-frame images in DIR, sorted by
ascending projection of ImagePositionPatient on n = row × column direction, the
convention of myonode's assembler and of check_seg.py) is mapped through the
inverse of the NIfTI affine (RAS, converted from DICOM LPS by negating x and y)
to a voxel index. The indices must be integers within 1e-3 voxel and inside the
NIfTI grid — otherwise the grids differ and the script fails (exit status 1)
instead of resampling. The result, shape (slices, rows, columns) = [z][y][x],
uint8, is written to --out.

--names writes {"<value>": "<name>"} for the non-zero values present, read from
the label table in the NIfTI header extension (TotalSegmentator writes a Caret
XML ``<LabelTable>``); values without a name are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom


def source_slices(src: Path):
    slices = []
    for p in sorted(src.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        if "ImagePositionPatient" not in ds:
            continue
        slices.append(ds)
    if not slices:
        raise SystemExit(f"nifti_to_grid: FAIL: no images under {src}")
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    n = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, dtype=float), n)))
    return slices


def label_names(img) -> dict[int, str]:
    names: dict[int, str] = {}
    for ext in img.header.extensions:
        text = ext.get_content()
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for key, name in re.findall(r'<Label Key="(\d+)"[^>]*><!\[CDATA\[(.*?)\]\]></Label>', text):
            names[int(key)] = name
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nifti", type=Path)
    ap.add_argument("--source-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--names", type=Path)
    args = ap.parse_args()

    img = nib.load(str(args.nifti))
    data = np.asanyarray(img.dataobj)
    if data.ndim != 3:
        print(f"nifti_to_grid: FAIL: {args.nifti} has {data.ndim} dimensions", file=sys.stderr)
        return 1
    inv = np.linalg.inv(img.affine)
    slices = source_slices(args.source_dir)
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    out = np.zeros((len(slices), rows, cols), dtype=np.uint8)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    for z, ds in enumerate(slices):
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
        lps = ipp[None, None, :] + c[..., None] * dc * iop[None, None, :3] + r[..., None] * dr * iop[None, None, 3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        rounded = np.rint(ijk)
        err = float(np.abs(ijk - rounded).max())
        if err > 1e-3:
            print(f"nifti_to_grid: FAIL: slice {z} does not lie on the NIfTI grid (off by {err:.4f} voxel)", file=sys.stderr)
            return 1
        idx = rounded.astype(np.int64)
        if (idx < 0).any() or (idx >= np.asarray(data.shape)).any():
            print(f"nifti_to_grid: FAIL: slice {z} reaches outside the NIfTI grid", file=sys.stderr)
            return 1
        out[z] = data[idx[..., 0], idx[..., 1], idx[..., 2]]
    np.save(args.out, out)
    if args.names:
        names = label_names(img)
        present = [int(v) for v in np.unique(out) if v != 0]
        args.names.write_text(json.dumps({str(v): names[v] for v in present if v in names}, indent=1))
    print(f"nifti_to_grid: {out.shape} (z, y, x), {len(np.unique(out)) - 1} labels, {int((out != 0).sum())} labelled voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
