#!/usr/bin/env python3
"""Independent check of a BINARY or LABELMAP DICOM-SEG written by myonode.

Usage:
    check_seg.py SEG_FILE --labels LABELS.npy (--source-dir DIR | --geometry GEOMETRY.json)
                 [--label-values 1,2,...] [--tol-mm 0.01] [--dciodvfy PATH]
                 [--require-dcmqi] [--dcmqi-dir DIR]

What is checked (any failure → exit status 1 with one "FAIL:" line per problem):

1. ``dciodvfy`` (dicom3tools; looked up with --dciodvfy, next to this Python
   interpreter, then on PATH) reports no line starting with "Error".
2. Structure, read with pydicom: Segmentation Storage SOP class, BINARY,
   1-bit MONOCHROME2, Rows/Columns of the source grid, StudyInstanceUID and
   FrameOfReferenceUID of the source, Pixel Data length
   ``ceil(frames·rows·columns / 8)`` rounded up to even, segment numbers 1..N,
   shared ImageOrientationPatient equal to the source, every source instance
   listed in the Common Instance Reference module.
   Per frame: its Source Image Sequence reference (ReferencedSOPInstanceUID and
   ReferencedFrameNumber) names a source slice, its ImagePositionPatient equals
   that slice's position (within --tol-mm), DimensionIndexValues equals
   [ReferencedSegmentNumber, rank of the plane along the normal among the planes
   present in the SEG], frames are segment-major in ascending plane position, and
   no frame is empty unless the whole segmentation is.
3. Content: the label map decoded by this script (bits LSB-first, no padding
   between frames) and the one returned by highdicom
   (``hd.seg.segread`` + ``get_pixels_by_source_instance`` /
   ``get_pixels_by_source_frame``) both equal LABELS.npy exactly.
4. Geometry as a viewer sees it: dcmqi ``segimage2itkimage`` (PyPI ``dcmqi``)
   rebuilds each segment as a volume from ImagePositionPatient /
   ImageOrientationPatient alone (ignoring the source references); every one
   of its planes must land on a source slice position and hold exactly that
   slice's mask, and slices it does not cover must be empty. Skipped with a
   note when dcmqi is not installed, unless --require-dcmqi is given.

LABELMAP objects (Label Map Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.7,
PS3.3 C.8.20 as amended by Sup 243) are recognised by SegmentationType and
checked the same way, except: 8- or 16-bit unsigned frames (BitsStored =
BitsAllocated, HighBit = BitsStored - 1), PixelPaddingValue 0, a background
item with SegmentNumber 0 coded (125040, DCM, "Background"), real segments
1..N, one frame per plane in ascending position with DimensionIndexValues =
[rank] and no Segment Identification Sequence, pixel value = segment number.
dcmqi (the PyPI build in the venv) reads LABELMAP into a single label volume
``1.nii.gz`` whose voxel values are the segment numbers; step 4 then compares
``value == segment number`` of that one volume instead of one volume per segment.

Label map convention (identical to src/volume.rs in myonode): LABELS.npy has
shape (slices, rows, columns) = [z][y][x]; axis 0 is ordered by ascending
projection of ImagePositionPatient on the slice normal
n = row_direction × column_direction (ImageOrientationPatient[0:3] ×
ImageOrientationPatient[3:6]); y follows the column direction (row index), x
the row direction (column index), exactly as the source pixel data.
Segment number s (1-based) corresponds to label value --label-values[s-1]
(default: s itself).

Expected geometry comes either from the source instances themselves
(--source-dir: every DICOM file in DIR, single-frame images or one enhanced
multi-frame image; all must belong to one series) or from a JSON file:

    {"image_orientation": [6 floats], "rows": R, "columns": C,
     "study_instance_uid": "...", "series_instance_uid": "...",
     "frame_of_reference_uid": "...",
     "slices": [{"sop_class_uid": "...", "sop_instance_uid": "...",
                 "frame_number": null | int, "position": [x, y, z]}, ...],
     "attributes": {"PatientName": "...", ...}}      # optional, compared as str

where "slices" is in LABELS.npy axis-0 order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"

try:
    import numpy as np
    import pydicom
    import highdicom as hd
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"check_seg: FAIL: missing Python package ({exc}); use the project venv", file=sys.stderr)
    sys.exit(2)


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)
        print(f"check_seg: FAIL: {msg}", file=sys.stderr)

    def check(self, cond: bool, msg: str) -> bool:
        if not cond:
            self.add(msg)
        return cond


def normal_of(iop) -> np.ndarray:
    iop = np.asarray(iop, dtype=float)
    n = np.cross(iop[0:3], iop[3:6])
    return n / np.linalg.norm(n)


# ---------------------------------------------------------------- expected geometry

def geometry_from_json(path: Path) -> dict:
    with open(path) as f:
        g = json.load(f)
    for key in ("image_orientation", "rows", "columns", "slices", "series_instance_uid",
                "study_instance_uid", "frame_of_reference_uid"):
        if key not in g:
            raise SystemExit(f"check_seg: FAIL: geometry JSON {path} lacks '{key}'")
    g.setdefault("attributes", {})
    return g


def geometry_from_sources(src_dir: Path) -> dict:
    """Expected grid and references from the source instances, sorted as myonode's assembler sorts."""
    slices = []
    iops, studies, series, fors, sizes = set(), set(), set(), set(), set()
    for p in sorted(src_dir.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        if "SOPInstanceUID" not in ds or "Rows" not in ds:
            continue
        studies.add(str(ds.StudyInstanceUID))
        series.add(str(ds.SeriesInstanceUID))
        fors.add(str(ds.get("FrameOfReferenceUID", "")))
        sizes.add((int(ds.Rows), int(ds.Columns)))
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
            for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
                po = fg.get("PlaneOrientationSequence") or (shared.get("PlaneOrientationSequence") if shared else None)
                pp = fg.get("PlanePositionSequence") or (shared.get("PlanePositionSequence") if shared else None)
                iops.add(tuple(round(float(v), 4) for v in po[0].ImageOrientationPatient))
                slices.append({
                    "sop_class_uid": str(ds.SOPClassUID),
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "frame_number": i + 1,
                    "position": [float(v) for v in pp[0].ImagePositionPatient],
                    "iop": [float(v) for v in po[0].ImageOrientationPatient],
                })
        else:
            if nframes != 1:
                raise SystemExit(f"check_seg: FAIL: {p}: multi-frame image without functional groups")
            iops.add(tuple(round(float(v), 4) for v in ds.ImageOrientationPatient))
            slices.append({
                "sop_class_uid": str(ds.SOPClassUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "frame_number": None,
                "position": [float(v) for v in ds.ImagePositionPatient],
                "iop": [float(v) for v in ds.ImageOrientationPatient],
            })
    if not slices:
        raise SystemExit(f"check_seg: FAIL: no DICOM images found under {src_dir}")
    if len(series) != 1 or len(studies) != 1 or len(sizes) != 1 or len(iops) != 1:
        raise SystemExit(
            f"check_seg: FAIL: {src_dir} is not one series on one grid: series={series}, "
            f"studies={studies}, sizes={sizes}, orientations={iops}")
    iop = slices[0]["iop"]
    n = normal_of(iop)
    slices.sort(key=lambda s: float(np.dot(s["position"], n)))
    rows, cols = sizes.pop()
    return {
        "image_orientation": iop,
        "rows": rows,
        "columns": cols,
        "study_instance_uid": studies.pop(),
        "series_instance_uid": series.pop(),
        "frame_of_reference_uid": fors.pop(),
        "slices": slices,
        "attributes": {},
    }


# ---------------------------------------------------------------- checks

def find_dciodvfy(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    here = Path(sys.executable).parent / "dciodvfy"
    if here.exists():
        return str(here)
    return shutil.which("dciodvfy")


def run_dciodvfy(seg_path: Path, exe: str | None, fails: Failures) -> None:
    if exe is None:
        fails.add("dciodvfy not found (next to the Python interpreter or on PATH); "
                  "install dicom3tools into the venv or pass --dciodvfy")
        return
    proc = subprocess.run([exe, "-new", str(seg_path)], capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning")]
    for l in errors:
        fails.add(f"dciodvfy: {l}")
    print(f"check_seg: dciodvfy: {len(errors)} errors, {len(warnings)} warnings")
    for l in warnings:
        print(f"check_seg:   {l}")


def check_structure(ds, geom: dict, labels: np.ndarray, seg_to_label: dict[int, int],
                    tol: float, fails: Failures) -> np.ndarray | None:
    """Structural checks; returns the label map decoded by this script (or None)."""
    if ds.get("SegmentationType") == "LABELMAP":
        return check_labelmap_structure(ds, geom, labels, seg_to_label, tol, fails)
    fails.check(str(ds.SOPClassUID) == SEG_SOP_CLASS, f"SOPClassUID {ds.SOPClassUID} is not Segmentation Storage")
    fails.check(ds.Modality == "SEG", f"Modality {ds.Modality!r}")
    fails.check(ds.SegmentationType == "BINARY", f"SegmentationType {ds.SegmentationType!r}")
    fails.check(int(ds.BitsAllocated) == 1 and int(ds.BitsStored) == 1 and int(ds.HighBit) == 0,
                "BitsAllocated/BitsStored/HighBit are not 1/1/0")
    fails.check(ds.PhotometricInterpretation == "MONOCHROME2", f"PhotometricInterpretation {ds.PhotometricInterpretation}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not fails.check((rows, cols) == (geom["rows"], geom["columns"]),
                       f"Rows×Columns {rows}×{cols} != source {geom['rows']}×{geom['columns']}"):
        return None
    nz = len(geom["slices"])
    if not fails.check(labels.shape == (nz, rows, cols),
                       f"labels.npy shape {labels.shape} != (slices, rows, columns) {(nz, rows, cols)}"):
        return None
    fails.check(str(ds.StudyInstanceUID) == geom["study_instance_uid"], "StudyInstanceUID differs from source")
    fails.check(str(ds.FrameOfReferenceUID) == geom["frame_of_reference_uid"], "FrameOfReferenceUID differs from source")
    fails.check(str(ds.SeriesInstanceUID) != geom["series_instance_uid"], "SEG reuses the source SeriesInstanceUID")
    for key, expected in geom.get("attributes", {}).items():
        got = str(ds.get(key, "<absent>"))
        fails.check(got == str(expected), f"{key} is {got!r}, expected {expected!r}")

    # Segments.
    seg_numbers = [int(s.SegmentNumber) for s in ds.SegmentSequence]
    fails.check(seg_numbers == list(range(1, len(seg_numbers) + 1)), f"SegmentNumbers {seg_numbers} are not 1..N")
    fails.check(set(seg_numbers) == set(seg_to_label), f"SEG segments {seg_numbers} vs label values {seg_to_label}")

    # Shared orientation.
    sfg = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in sfg.PlaneOrientationSequence[0].ImageOrientationPatient]
    fails.check(np.allclose(iop, geom["image_orientation"], atol=1e-4),
                f"ImageOrientationPatient {iop} != source {geom['image_orientation']}")
    n = normal_of(geom["image_orientation"])

    # Common Instance Reference.
    referenced = set()
    for rs in ds.get("ReferencedSeriesSequence", []):
        fails.check(str(rs.SeriesInstanceUID) == geom["series_instance_uid"],
                    f"ReferencedSeriesSequence names series {rs.SeriesInstanceUID}")
        for ri in rs.ReferencedInstanceSequence:
            referenced.add(str(ri.ReferencedSOPInstanceUID))
    expected_uids = {s["sop_instance_uid"] for s in geom["slices"]}
    missing = expected_uids - referenced
    fails.check(not missing, f"{len(missing)} source instances missing from ReferencedSeriesSequence")
    fails.check(not (referenced - expected_uids), "ReferencedSeriesSequence lists instances not in the source")

    # Pixel data length.
    nframes = int(ds.NumberOfFrames)
    nbits = nframes * rows * cols
    expected_len = (nbits + 7) // 8
    expected_len += expected_len % 2
    fails.check(len(ds.PixelData) == expected_len,
                f"Pixel Data length {len(ds.PixelData)} != {expected_len} for {nframes} frames of {rows}×{cols}")
    bits = np.unpackbits(np.frombuffer(ds.PixelData, dtype=np.uint8), bitorder="little")[:nbits]
    if bits.size != nbits:
        return None
    frames = bits.reshape(nframes, rows, cols).astype(bool)

    # Per-frame references, positions and dimension indices.
    index_of = {(s["sop_instance_uid"], s["frame_number"]): z for z, s in enumerate(geom["slices"])}
    pfg = ds.PerFrameFunctionalGroupsSequence
    fails.check(len(pfg) == nframes, f"{len(pfg)} per-frame items for NumberOfFrames {nframes}")
    frame_info = []  # (segment, z, dim index values)
    for i, fg in enumerate(pfg):
        seg_no = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = fg.DerivationImageSequence[0].SourceImageSequence
        if not fails.check(len(src) == 1, f"frame {i + 1}: {len(src)} source images"):
            return None
        ref = src[0]
        fails.check(ref.get("SpatialLocationsPreserved") == "YES", f"frame {i + 1}: SpatialLocationsPreserved is not YES")
        fn = int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None
        key = (str(ref.ReferencedSOPInstanceUID), fn)
        if not fails.check(key in index_of, f"frame {i + 1}: references unknown source {key}"):
            return None
        z = index_of[key]
        ipp = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        exp = geom["slices"][z]["position"]
        fails.check(max(abs(a - b) for a, b in zip(ipp, exp)) <= tol,
                    f"frame {i + 1}: ImagePositionPatient {ipp} != source slice {z} position {exp}")
        div = [int(v) for v in fg.FrameContentSequence[0].DimensionIndexValues]
        frame_info.append((seg_no, z, div))

    present_planes = sorted({z for _, z, _ in frame_info},
                            key=lambda z: float(np.dot(geom["slices"][z]["position"], n)))
    rank = {z: r + 1 for r, z in enumerate(present_planes)}
    all_empty = not frames.any()
    order_key = [(s, rank[z]) for s, z, _ in frame_info]
    fails.check(order_key == sorted(order_key), "frames are not segment-major in ascending plane position")
    for i, (s, z, div) in enumerate(frame_info):
        fails.check(div == [s, rank[z]], f"frame {i + 1}: DimensionIndexValues {div} != {[s, rank[z]]}")
        if not all_empty:
            fails.check(bool(frames[i].any()), f"frame {i + 1} (segment {s}, slice {z}) is empty but stored")
    if all_empty:
        fails.check(nframes == len(seg_numbers) * nz,
                    f"empty segmentation has {nframes} frames, expected every segment × slice = {len(seg_numbers) * nz}")

    decoded = np.zeros((nz, rows, cols), dtype=np.int32)
    for i, (s, z, _) in enumerate(frame_info):
        overlap = frames[i] & (decoded[z] != 0)
        fails.check(not overlap.any(), f"frame {i + 1}: segments overlap on slice {z}")
        decoded[z][frames[i]] = seg_to_label.get(s, -1)
    return decoded


def check_common(ds, geom: dict, labels: np.ndarray, fails: Failures) -> tuple[int, int] | None:
    """Checks shared by both types: grid, UIDs, attributes, orientation, instance references."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not fails.check((rows, cols) == (geom["rows"], geom["columns"]),
                       f"Rows×Columns {rows}×{cols} != source {geom['rows']}×{geom['columns']}"):
        return None
    nz = len(geom["slices"])
    if not fails.check(labels.shape == (nz, rows, cols),
                       f"labels.npy shape {labels.shape} != (slices, rows, columns) {(nz, rows, cols)}"):
        return None
    fails.check(str(ds.StudyInstanceUID) == geom["study_instance_uid"], "StudyInstanceUID differs from source")
    fails.check(str(ds.FrameOfReferenceUID) == geom["frame_of_reference_uid"], "FrameOfReferenceUID differs from source")
    fails.check(str(ds.SeriesInstanceUID) != geom["series_instance_uid"], "SEG reuses the source SeriesInstanceUID")
    for key, expected in geom.get("attributes", {}).items():
        got = str(ds.get(key, "<absent>"))
        fails.check(got == str(expected), f"{key} is {got!r}, expected {expected!r}")
    sfg = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in sfg.PlaneOrientationSequence[0].ImageOrientationPatient]
    fails.check(np.allclose(iop, geom["image_orientation"], atol=1e-4),
                f"ImageOrientationPatient {iop} != source {geom['image_orientation']}")
    referenced = set()
    for rs in ds.get("ReferencedSeriesSequence", []):
        fails.check(str(rs.SeriesInstanceUID) == geom["series_instance_uid"],
                    f"ReferencedSeriesSequence names series {rs.SeriesInstanceUID}")
        for ri in rs.ReferencedInstanceSequence:
            referenced.add(str(ri.ReferencedSOPInstanceUID))
    expected_uids = {s["sop_instance_uid"] for s in geom["slices"]}
    missing = expected_uids - referenced
    fails.check(not missing, f"{len(missing)} source instances missing from ReferencedSeriesSequence")
    fails.check(not (referenced - expected_uids), "ReferencedSeriesSequence lists instances not in the source")
    return rows, cols


def check_labelmap_structure(ds, geom: dict, labels: np.ndarray, seg_to_label: dict[int, int],
                             tol: float, fails: Failures) -> np.ndarray | None:
    """LABELMAP structure (Sup 243); returns the label map decoded by this script (or None)."""
    fails.check(str(ds.SOPClassUID) == LABELMAP_SOP_CLASS,
                f"SOPClassUID {ds.SOPClassUID} is not Label Map Segmentation Storage")
    fails.check(ds.Modality == "SEG", f"Modality {ds.Modality!r}")
    bits = int(ds.BitsAllocated)
    fails.check(bits in (8, 16) and int(ds.BitsStored) == bits and int(ds.HighBit) == bits - 1
                and int(ds.PixelRepresentation) == 0,
                f"BitsAllocated/BitsStored/HighBit/PixelRepresentation {bits}/{ds.BitsStored}/{ds.HighBit}/"
                f"{ds.PixelRepresentation} are not 8/8/7/0 or 16/16/15/0")
    fails.check(ds.PhotometricInterpretation == "MONOCHROME2", f"PhotometricInterpretation {ds.PhotometricInterpretation}")
    fails.check(int(ds.get("PixelPaddingValue", -1)) == 0, "PixelPaddingValue is not 0 (background)")
    rc = check_common(ds, geom, labels, fails)
    if rc is None:
        return None
    rows, cols = rc
    nz = len(geom["slices"])
    seg_numbers = [int(s.SegmentNumber) for s in ds.SegmentSequence]
    if fails.check(seg_numbers and seg_numbers[0] == 0, f"first segment is {seg_numbers[:1]}, expected background 0"):
        bg = ds.SegmentSequence[0]
        for attr in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
            c = bg[attr][0]
            fails.check((c.CodeValue, c.CodingSchemeDesignator) == ("125040", "DCM"),
                        f"background {attr} is ({c.CodeValue}, {c.CodingSchemeDesignator}), expected (125040, DCM)")
    real = [n for n in seg_numbers if n != 0]
    fails.check(real == list(range(1, len(real) + 1)), f"SegmentNumbers {real} are not 1..N")
    fails.check(set(real) == set(seg_to_label), f"SEG segments {real} vs label values {seg_to_label}")
    fails.check(len(ds.DimensionIndexSequence) == 1
                and ds.DimensionIndexSequence[0].DimensionIndexPointer == 0x00200032,
                "LABELMAP dimension index is not ImagePositionPatient alone")
    n = normal_of(geom["image_orientation"])

    nframes = int(ds.NumberOfFrames)
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    nbytes = nframes * rows * cols * (bits // 8)
    fails.check(len(ds.PixelData) == nbytes + nbytes % 2,
                f"Pixel Data length {len(ds.PixelData)} != {nbytes + nbytes % 2} for {nframes} frames of {rows}×{cols}")
    if len(ds.PixelData) < nbytes:
        return None
    frames = np.frombuffer(ds.PixelData[:nbytes], dtype=dtype).reshape(nframes, rows, cols)
    unknown = set(np.unique(frames).tolist()) - set(seg_numbers)
    fails.check(not unknown, f"pixel values {sorted(unknown)} are no segment number")

    index_of = {(s["sop_instance_uid"], s["frame_number"]): z for z, s in enumerate(geom["slices"])}
    pfg = ds.PerFrameFunctionalGroupsSequence
    fails.check(len(pfg) == nframes, f"{len(pfg)} per-frame items for NumberOfFrames {nframes}")
    planes = []
    for i, fg in enumerate(pfg):
        fails.check("SegmentIdentificationSequence" not in fg, f"frame {i + 1}: LABELMAP frame has a Segment Identification Sequence")
        src = fg.DerivationImageSequence[0].SourceImageSequence
        if not fails.check(len(src) == 1, f"frame {i + 1}: {len(src)} source images"):
            return None
        ref = src[0]
        fn = int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None
        key = (str(ref.ReferencedSOPInstanceUID), fn)
        if not fails.check(key in index_of, f"frame {i + 1}: references unknown source {key}"):
            return None
        z = index_of[key]
        ipp = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        exp = geom["slices"][z]["position"]
        fails.check(max(abs(a - b) for a, b in zip(ipp, exp)) <= tol,
                    f"frame {i + 1}: ImagePositionPatient {ipp} != source slice {z} position {exp}")
        raw = fg.FrameContentSequence[0].DimensionIndexValues
        div = [int(v) for v in (raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw])]
        planes.append((z, div))
    zs = [z for z, _ in planes]
    fails.check(len(set(zs)) == len(zs), "a source plane has more than one LABELMAP frame")
    ordered = sorted(set(zs), key=lambda z: float(np.dot(geom["slices"][z]["position"], n)))
    rank = {z: r + 1 for r, z in enumerate(ordered)}
    fails.check(zs == ordered, "frames are not in ascending plane position")
    all_empty = not frames.any()
    for i, (z, div) in enumerate(planes):
        fails.check(div == [rank[z]], f"frame {i + 1}: DimensionIndexValues {div} != {[rank[z]]}")
        if not all_empty:
            fails.check(bool(frames[i].any()), f"frame {i + 1} (slice {z}) is empty but stored")
    if all_empty:
        fails.check(nframes == nz, f"empty segmentation has {nframes} frames, expected every slice = {nz}")
    lut = np.full(65536, -1, dtype=np.int32)
    lut[0] = 0
    for s, v in seg_to_label.items():
        lut[s] = v
    decoded = np.zeros((nz, rows, cols), dtype=np.int32)
    for i, (z, _) in enumerate(planes):
        decoded[z] = lut[frames[i].astype(np.int64)]
    return decoded


def check_with_highdicom(path: Path, geom: dict, seg_to_label: dict[int, int], fails: Failures) -> np.ndarray | None:
    seg = hd.seg.segread(str(path))
    slices = geom["slices"]
    if all(s["frame_number"] is None for s in slices):
        arr = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[s["sop_instance_uid"] for s in slices],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    else:
        uids = {s["sop_instance_uid"] for s in slices}
        if not fails.check(len(uids) == 1, "highdicom check supports one multi-frame source instance"):
            return None
        arr = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uids.pop(),
            source_frame_numbers=[s["frame_number"] for s in slices],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    lut = np.zeros(int(arr.max(initial=0)) + 1, dtype=np.int32)
    for s, v in seg_to_label.items():
        if s < lut.size:
            lut[s] = v
    return lut[arr.astype(np.int64)]


def find_tool(name: str, explicit_dir: str | None) -> str | None:
    if explicit_dir:
        p = Path(explicit_dir) / name
        return str(p) if p.exists() else None
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


def check_with_dcmqi(path: Path, geom: dict, labels: np.ndarray, seg_to_label: dict[int, int],
                     tol: float, exe: str, fails: Failures, labelmap: bool = False) -> None:
    import tempfile
    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="check_seg_dcmqi_") as out:
        proc = subprocess.run([exe, "--inputDICOM", str(path), "--outputDirectory", out, "-t", "nii"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            fails.add(f"dcmqi segimage2itkimage failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
            return
        positions = np.asarray([s["position"] for s in geom["slices"]], dtype=float)
        iop = np.asarray(geom["image_orientation"], dtype=float)
        # NIfTI affines are RAS and stored as float32: allow for that.
        ptol = max(tol, 1e-3 * max(1.0, float(np.abs(positions).max())) / 100.0)
        for s, value in seg_to_label.items():
            # LABELMAP: dcmqi writes one label volume (1.nii.gz) holding segment numbers.
            f = Path(out) / ("1.nii.gz" if labelmap else f"{s}.nii.gz")
            if not f.exists():
                f = Path(out) / f"{s}.nii"
            if not fails.check(f.exists(), f"dcmqi wrote no volume for segment {s}"):
                continue
            img = nib.load(str(f))
            data = np.asanyarray(img.dataobj)  # (columns, rows, planes)
            lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :]
            for axis, expected, what in ((0, iop[0:3], "row"), (1, iop[3:6], "column")):
                d = lps[:, axis] / np.linalg.norm(lps[:, axis])
                fails.check(np.allclose(d, expected, atol=1e-3),
                            f"dcmqi segment {s}: {what} direction {d} != ImageOrientationPatient {expected}")
            covered = set()
            for k in range(data.shape[2]):
                pos = lps @ np.array([0.0, 0.0, k, 1.0])
                dist = np.abs(positions - pos).max(axis=1)
                z = int(dist.argmin())
                if not fails.check(dist[z] <= ptol,
                                   f"dcmqi segment {s}: plane {k} at {pos.tolist()} matches no source slice"):
                    continue
                covered.add(z)
                got = (data[:, :, k].T == s) if labelmap else (data[:, :, k].T != 0)
                want = labels[z] == value
                if not np.array_equal(got, want):
                    fails.add(f"dcmqi segment {s}: plane {k} (source slice {z}) differs from labels.npy "
                              f"in {int((got != want).sum())} pixels")
            for z in set(range(len(positions))) - covered:
                fails.check(not (labels[z] == value).any(),
                            f"dcmqi segment {s}: source slice {z} is labelled but not in dcmqi's volume")


def compare(name: str, got: np.ndarray, want: np.ndarray, fails: Failures) -> None:
    if got.shape != want.shape:
        fails.add(f"{name}: shape {got.shape} != labels {want.shape}")
        return
    diff = np.argwhere(got != want.astype(np.int32))
    if diff.size:
        z, y, x = diff[0]
        fails.add(f"{name}: {len(diff)} voxels differ from labels.npy; first at (z={z}, y={y}, x={x}): "
                  f"SEG {got[z, y, x]} vs labels {want[z, y, x]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seg", type=Path, help="the DICOM-SEG file")
    ap.add_argument("--labels", type=Path, required=True, help="expected label map .npy, shape (z, y, x)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--source-dir", type=Path, help="directory of the source DICOM instances")
    src.add_argument("--geometry", type=Path, help="geometry JSON (see module docstring)")
    ap.add_argument("--label-values", default=None,
                    help="comma-separated label value of segment 1, 2, ... (default: segment number)")
    ap.add_argument("--tol-mm", type=float, default=0.01, help="ImagePositionPatient tolerance in mm")
    ap.add_argument("--dciodvfy", default=os.environ.get("DCIODVFY"), help="path of dciodvfy")
    ap.add_argument("--dcmqi-dir", default=None, help="directory holding dcmqi's segimage2itkimage")
    ap.add_argument("--require-dcmqi", action="store_true", help="fail when dcmqi is not installed")
    args = ap.parse_args(argv)

    fails = Failures()
    labels = np.load(args.labels)
    if labels.ndim != 3:
        fails.add(f"labels.npy has {labels.ndim} dimensions, expected 3 (z, y, x)")
        return 1
    geom = geometry_from_sources(args.source_dir) if args.source_dir else geometry_from_json(args.geometry)

    ds = pydicom.dcmread(args.seg)
    is_labelmap = ds.get("SegmentationType") == "LABELMAP"
    nseg = sum(1 for s in ds.SegmentSequence if int(s.SegmentNumber) != 0)
    if args.label_values:
        values = [int(v) for v in args.label_values.split(",")]
    else:
        values = list(range(1, nseg + 1))
    seg_to_label = {i + 1: v for i, v in enumerate(values)}
    unknown = set(np.unique(labels).tolist()) - set(values) - {0}
    fails.check(not unknown, f"labels.npy holds values {sorted(unknown)} that map to no segment")

    run_dciodvfy(args.seg, find_dciodvfy(args.dciodvfy), fails)
    decoded = check_structure(ds, geom, labels, seg_to_label, args.tol_mm, fails)
    if decoded is not None:
        compare("own decoder", decoded, labels, fails)
    try:
        via_hd = check_with_highdicom(args.seg, geom, seg_to_label, fails)
        if via_hd is not None:
            compare("highdicom", via_hd, labels, fails)
    except Exception as exc:  # highdicom refuses the object: that is a failure
        fails.add(f"highdicom could not read the SEG: {type(exc).__name__}: {exc}")

    dcmqi = find_tool("segimage2itkimage", args.dcmqi_dir)
    if dcmqi is None:
        if args.require_dcmqi:
            fails.add("dcmqi segimage2itkimage not found (pip install dcmqi into the venv)")
        else:
            print("check_seg: note: dcmqi not installed, geometry check through dcmqi skipped")
    else:
        check_with_dcmqi(args.seg, geom, labels, seg_to_label, args.tol_mm, dcmqi, fails, is_labelmap)

    if fails.items:
        print(f"check_seg: {len(fails.items)} problem(s) in {args.seg}", file=sys.stderr)
        return 1
    print(f"check_seg: OK {args.seg}: {int(ds.NumberOfFrames)} frames, {nseg} segments, "
          f"{len(geom['slices'])} source slices, {int((labels != 0).sum())} labelled voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
