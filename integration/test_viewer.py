"""Seen in a viewer: the node's DICOM-SEG, delivered to Orthanc, is drawn by the
OHIF viewer (3.13.2) in headless Chromium over the source images (issue #9).

Per series: the scanner sends the series to the PACS (Orthanc) and to
`myonode serve`, whose only destination is that Orthanc; once Orthanc's REST
API lists the SEG in the study, integration/viewer/view_seg.mjs opens the study
in OHIF (served with a DICOMweb proxy to Orthanc from one origin), screenshots
the viewport, double-clicks the SEG thumbnail, answers Yes, and screenshots
again. The test then asserts that
  - the segmentation panel lists every SegmentLabel of the SEG;
  - the viewport shows pixels of each segment's display colour
    (RecommendedDisplayCIELabValue, PS3.3 C.8.20.2 / C.10.7.1.1, converted to
    sRGB as OHIF does) after loading, and none before;
  - the displayed slice is one where the SEG's mask is non-empty, and the drawn
    segmentation covers the SEG's mask of that image mapped onto the viewport
    (Dice >= MIN_OVERLAY_DICE; a flipped or transposed mask fails this).
The node's destination also takes both measurement reports ("sr", "sr-planar"):
the test asserts that both reach Orthanc, reference the SEG and that DCMTK
dsrdump parses them (check_reports_in_pacs).
Screenshots and the browser's report go to out/test/viewer/<series>/ (CI
artefacts).

Needs (scripts/setup.sh installs them): Orthanc + DICOMweb plugin, Chromium,
Node.js, integration/viewer/node_modules (playwright-core) and
integration/viewer/ohif/dist. Orthanc binds 0.0.0.0, so the tests skip
outside a loopback-only network namespace (scripts/test.sh runs in one).
MYONODE_SKIP_VIEWER=1 skips them (and makes setup.sh skip the installs).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import orthanc as orthanc_mod
import support

VIEWER_DIR = support.REPO / "integration" / "viewer"
OHIF_DIST = VIEWER_DIR / "ohif" / "dist"
OUT_DIR = support.REPO / "out" / "test" / "viewer"
CHROMIUM = os.environ.get("MYONODE_CHROMIUM", "/usr/bin/chromium")

COLOUR_TOLERANCE = 12.0
"""Largest Euclidean RGB distance (0..255 scale) of a screenshot pixel from a segment's
display colour that still counts as that colour: OHIF draws segment outlines opaque
in the segment colour; the fill is blended with the image and does not count."""

MIN_COLOUR_PIXELS = 100
# OHIF 3.13.2 draws the annotations of a loaded SR in pure green.
SR_ANNOTATION_RGB = (0, 255, 0)
"""Fewest pixels of a segment's colour in the viewport for "the segment is drawn" (an
outline around a 1 cm² region on these series is several hundred pixels)."""


MIN_OVERLAY_DICE = 0.97
"""Least Dice between the drawn segmentation and the SEG's mask mapped onto the viewport.
Measured: 0.990 (knee MR), 0.996 (CT); the same masks flipped left-right score 0.76 / 0.89."""

TINT_MIN = 15
"""A screenshot pixel is "coloured" (segmentation drawn) when max - min of its RGB exceeds this."""

EDGE_MARGIN = 16
"""Pixels along the viewport border left out of the overlay comparison (border, scroll bar)."""


def _skip_reason() -> str | None:
    if os.environ.get("MYONODE_SKIP_VIEWER") == "1":
        return "MYONODE_SKIP_VIEWER=1"
    return orthanc_mod.isolation_problem()


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=f"viewer test: {_skip_reason()}")


def _installation_problems() -> list[str]:
    problems = []
    p = orthanc_mod.installation_problem(dicomweb=True)
    if p:
        problems.append(p)
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} missing (Debian package `chromium`; or set MYONODE_CHROMIUM)")
    if shutil.which("node") is None:
        problems.append("`node` not on PATH (Debian packages `nodejs`, `npm`)")
    if not (VIEWER_DIR / "node_modules" / "playwright-core").is_dir():
        problems.append(f"{VIEWER_DIR}/node_modules/playwright-core missing (npm ci in {VIEWER_DIR})")
    if not (OHIF_DIST / "index.html").is_file():
        problems.append(f"{OHIF_DIST}/index.html missing (OHIF viewer not unpacked)")
    return problems


# ------------------------------------------------------------------ colours
def dicom_lab_to_rgb(lab: list[int]) -> tuple[int, int, int]:
    """sRGB (0..255) of a DICOM scaled CIELab triplet (RecommendedDisplayCIELabValue).

    DICOM scales L* 0..100 and a*, b* -128..127 to 0..65535 (PS3.3 C.10.7.1.1);
    CIELab → XYZ with the D65 white point, XYZ → linear sRGB (IEC 61966-2-1
    matrix), sRGB transfer function, clipped and rounded.
    """
    L = lab[0] * 100.0 / 65535.0
    a = lab[1] * 255.0 / 65535.0 - 128.0
    b = lab[2] * 255.0 / 65535.0 - 128.0
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    d = 6.0 / 29.0

    def finv(t: float) -> float:
        return t**3 if t > d else 3 * d * d * (t - 4.0 / 29.0)

    X, Y, Z = 0.95047 * finv(fx), 1.0 * finv(fy), 1.08883 * finv(fz)
    lin = (
        3.2404542 * X - 1.5371385 * Y - 0.4985314 * Z,
        -0.9692660 * X + 1.8760108 * Y + 0.0415560 * Z,
        0.0556434 * X - 0.2040259 * Y + 1.0572252 * Z,
    )

    def gamma(c: float) -> float:
        c = min(1.0, max(0.0, c))
        return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055

    r, g, bl = (round(255 * gamma(c)) for c in lin)
    return r, g, bl


def colour_pixels(png: Path, box: dict, rgb: tuple[int, int, int]) -> int:
    """Pixels within COLOUR_TOLERANCE of `rgb` inside `box` ({x, y, width, height}, px) of a screenshot."""
    im = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    crop = im[y : y + h, x : x + w]
    dist = np.sqrt(((crop - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=2))
    return int((dist <= COLOUR_TOLERANCE).sum())


def seg_mask_of_image(seg: pydicom.Dataset, sop_instance_uid: str) -> np.ndarray:
    """Union over segments of a BINARY SEG's frames derived from one source image:
    bool (Rows, Columns), row-major as stored. Frames are matched through
    PerFrameFunctionalGroups / DerivationImageSequence / SourceImageSequence (PS3.3 C.8.20)."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    mask = np.zeros((int(seg.Rows), int(seg.Columns)), dtype=bool)
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        refs = {r.ReferencedSOPInstanceUID for d in fg.DerivationImageSequence for r in d.SourceImageSequence}
        if sop_instance_uid in refs:
            mask |= frames[i] > 0
    return mask


def overlay_dice(png: Path, box: dict, mask: np.ndarray) -> float:
    """Dice between the segmentation drawn in a screenshot and `mask` mapped onto the viewport.

    Drawn = pixels with colour (max - min channel > TINT_MIN) inside `box`: the
    images here are greyscale, the segmentation fill/outline tints them.
    Expected = `mask` (rows × columns, square pixels) scaled to fit the viewport
    and centred (cornerstone's default "fit" camera in OHIF), sampled at pixel
    centres. A margin of EDGE_MARGIN px along the viewport border (border,
    scroll bar) is left out of both.
    """
    im = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    crop = im[y : y + h, x : x + w]
    keep = np.zeros((h, w), dtype=bool)
    keep[EDGE_MARGIN:-EDGE_MARGIN, EDGE_MARGIN:-EDGE_MARGIN] = True
    drawn = ((crop.max(axis=2) - crop.min(axis=2)) > TINT_MIN) & keep
    rows, cols = mask.shape
    scale = min(w / cols, h / rows)
    y0, x0 = (h - rows * scale) / 2, (w - cols * scale) / 2
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.floor((yy + 0.5 - y0) / scale).astype(int)
    c = np.floor((xx + 0.5 - x0) / scale).astype(int)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    expected = np.zeros((h, w), dtype=bool)
    expected[inside] = mask[r[inside], c[inside]]
    expected &= keep
    total = int(drawn.sum() + expected.sum())
    return 2.0 * int((drawn & expected).sum()) / total if total else 0.0


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def orthanc(tmp_path: Path, request):
    """Orthanc with the DICOMweb plugin, all state under tmp_path/orthanc."""
    problems = _installation_problems()
    assert not problems, "viewer test prerequisites missing (run scripts/setup.sh):\n  " + "\n  ".join(problems)
    o = orthanc_mod.start(tmp_path / "orthanc")
    try:
        yield o
    finally:
        o.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n----- Orthanc log ({o.log}) -----\n{o.log_text()[-20000:]}")


def start_node_to(tmp_path: Path, node_bin: Path, o: orthanc_mod.Orthanc) -> support.Node:
    """`myonode serve` on a free port whose only destination is Orthanc `o` (defaults otherwise)."""
    return support.launch_node(
        node_bin,
        tmp_path / "node",
        "[[destinations]]\n"
        'name = "orthanc"\n'
        f'ae_title = "{o.ae_title}"\n'
        'host = "127.0.0.1"\n'
        f"port = {o.dicom_port}\n"
        "max_attempts = 3\n"
        "retry_delay_seconds = 0.5\n"
        'outputs = ["seg-binary", "sr", "sr-planar"]\n',
    )


def check_reports_in_pacs(o: orthanc_mod.Orthanc, sr_ids: list[str], seg: pydicom.Dataset, tmp: Path) -> pydicom.Dataset:
    """The two SRs in the PACS are the volumetric TID 1500 report (`sr`) and the planar one
    (`sr-planar`, SeriesDescription "Planar Measurement Report"), both reference `seg`, and
    DCMTK dsrdump parses them: the volumetric one reports a Volume (118565006, SCT) in cm3,
    the planar one per segment an Image Region POLYLINE and an Area (42798000, SCT) in cm2."""
    assert len(sr_ids) == 2, f"expected the volumetric and the planar SR in the study, Orthanc has {len(sr_ids)}"
    by_kind: dict[str, str] = {}
    for i in sr_ids:
        path = tmp / f"sr-{i}.dcm"
        path.write_bytes(o.file(i))
        ds = pydicom.dcmread(path)
        evidence = {
            r.ReferencedSOPInstanceUID
            for st in ds.CurrentRequestedProcedureEvidenceSequence
            for se in st.ReferencedSeriesSequence
            for r in se.ReferencedSOPSequence
        }
        assert seg.SOPInstanceUID in evidence, f"SR {ds.SeriesDescription!r} does not reference the SEG"
        dump = support.run(["dsrdump", "-Ee", "-Ec", str(path)], timeout=60)
        assert dump.returncode == 0, support.describe(dump)
        kind = "planar" if str(ds.SeriesDescription).startswith("Planar Measurement Report") else "volumetric"
        by_kind[kind] = dump.stdout
        if kind == "planar":
            planar_ds = ds
    assert set(by_kind) == {"planar", "volumetric"}, f"SRs in the PACS: {sorted(by_kind)}"
    vol, planar = by_kind["volumetric"], by_kind["planar"]
    assert re.search(r'NUM:\(,,"Volume"\)="[0-9.eE+-]+" \(cm3,UCUM', vol), vol[-3000:]
    assert re.search(r'SCOORD:\(,,"Image Region"\)=\(POLYLINE,', planar), planar[-3000:]
    assert re.search(r'NUM:\(,,"Area"\)="[0-9.eE+-]+" \(cm2,UCUM', planar), planar[-3000:]
    return planar_ds


def planar_measurements(ds: pydicom.Dataset) -> list[tuple[float, str]]:
    """(Area in cm², SOPInstanceUID of the image its outline is drawn on) per TID 1410 group
    of a planar report: the NUM "Area" (42798000, SCT) and the IMAGE under the SCOORD."""
    found: list[tuple[float, str]] = []

    def walk(items):
        for it in items:
            children = list(getattr(it, "ContentSequence", []))
            if it.ValueType == "CONTAINER" and children:
                area = [float(c.MeasuredValueSequence[0].NumericValue) for c in children
                        if c.ValueType == "NUM" and c.ConceptNameCodeSequence[0].CodeValue == "42798000"]
                image = [g.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for c in children
                         if c.ValueType == "SCOORD" for g in getattr(c, "ContentSequence", []) if g.ValueType == "IMAGE"]
                if area and image:
                    found.append((area[0], image[0]))
                walk(children)

    walk(ds.ContentSequence)
    return found


# ---------------------------------------------------------------------- test
@pytest.mark.parametrize(
    "series,storescu_extra",
    [
        pytest.param("mr-knee-dess-echo1", [], id="mr-knee-dess-echo1"),
        pytest.param("ct-abdomen-j2k", ["-xv"], id="ct-abdomen-j2k"),
    ],
)
def test_viewer_draws_the_seg(tmp_path: Path, node_bin: Path, data_dir: Path, orthanc, request, series, storescu_extra):
    source = data_dir / "series" / series
    files = support.dicom_files(source)
    assert files, f"no DICOM files in {source}"
    study_uid = support.read_header(files[0]).StudyInstanceUID

    node = start_node_to(tmp_path, node_bin, orthanc)
    try:
        # The scanner archives the images in the PACS and sends them to the node.
        sent = support.storescu(orthanc.dicom_port, orthanc.ae_title, [source], extra=storescu_extra)
        assert sent.returncode == 0, support.describe(sent)
        sent = support.storescu(node.port, node.ae_title, [source], extra=storescu_extra)
        assert sent.returncode == 0, support.describe(sent)

        seg_ids = support.wait_for(
            f"the SEG of {series} in Orthanc's study {study_uid}",
            lambda: orthanc.instances_of_class(study_uid, support.SEGMENTATION_STORAGE),
            alive=lambda: node.problem() or orthanc.problem(),
        )
        # ... and both measurement reports: the volumetric one (`sr`) and the planar one (`sr-planar`).
        sr_ids = support.wait_for(
            f"the two SRs of {series} in Orthanc's study {study_uid}",
            lambda: (lambda ids: ids if len(ids) >= 2 else None)(
                orthanc.instances_of_class(study_uid, support.COMPREHENSIVE_3D_SR_STORAGE)
            ),
            alive=lambda: node.problem() or orthanc.problem(),
        )
    except BaseException:
        print(f"\n----- myonode log ({node.log}) -----\n{node.log_text()[-20000:]}")
        raise
    finally:
        support.stop(node.proc)
    assert len(seg_ids) == 1, f"expected one SEG in the study, Orthanc has {len(seg_ids)}"
    seg = pydicom.dcmread(io.BytesIO(orthanc.file(seg_ids[0])))
    planar_sr = check_reports_in_pacs(orthanc, sr_ids, seg, tmp_path)
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    colours = {n: dicom_lab_to_rgb(list(s.RecommendedDisplayCIELabValue)) for n, s in segments.items()}
    labels = {n: str(s.SegmentLabel) for n, s in segments.items()}
    assert all(labels.values()), f"SEG segments without SegmentLabel: {labels}"

    out = OUT_DIR / series
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    args = {
        "ohifDist": str(OHIF_DIST),
        "dicomweb": orthanc.dicomweb_url,
        "study": study_uid,
        "outDir": str(out),
        "chromium": CHROMIUM,
        "waitMs": 240000,
        "planarSr": "Planar",
    }
    browser = support.run(["node", VIEWER_DIR / "view_seg.mjs", json.dumps(args)], timeout=900, cwd=VIEWER_DIR)
    (out / "view_seg.log").write_text(browser.stdout + browser.stderr)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    assert browser.returncode == 0, (
        f"the viewer run failed (screenshots in {out}):\n{support.describe(browser)}\n"
        f"report: {json.dumps(report, indent=2)}\nOrthanc log:\n{orthanc.log_text()[-4000:]}"
    )
    assert report.get("segThumbnails") == 1, report

    # Segment names in OHIF's segmentation panel.
    missing = [name for name in labels.values() if name not in report["segmentNames"]]
    assert not missing, f"segments {missing} not in OHIF's segmentation panel rows {report['segmentNames']}"

    # The segment colours are drawn after loading the SEG, and not before.
    box = report["viewport"]
    assert box and box["width"] > 100 and box["height"] > 100, f"no image viewport found: {report}"
    for n, rgb in colours.items():
        before = colour_pixels(out / "before-seg.png", box, rgb)
        after = colour_pixels(out / "after-seg.png", box, rgb)
        print(f"{series}: segment {n} {labels[n]!r} colour {rgb}: {before} px before, {after} px after loading the SEG")
        assert after >= MIN_COLOUR_PIXELS, (
            f"segment {labels[n]!r}: only {after} px of its display colour {rgb} in the viewport "
            f"after loading the SEG (screenshot {out / 'after-seg.png'})"
        )
        assert before * 50 <= after, (
            f"segment {labels[n]!r}: {before} px of its colour {rgb} already before loading the SEG "
            f"(vs {after} after): the colour check cannot tell the SEG apart (see {out})"
        )

    # The slice shown is one where the mask is non-empty, and the drawn segmentation
    # lies where the SEG puts it on that image (catches flips/transposes that
    # validators cannot see): the overlay names the image by InstanceNumber.
    m = re.search(r"I:\s*(\d+)", report.get("overlayAfter", ""))
    assert m, f"no InstanceNumber in the viewport overlay {report.get('overlayAfter')!r}"
    instance_number = int(m.group(1))
    shown = [f for f in files if int(support.read_header(f).InstanceNumber) == instance_number]
    assert len(shown) == 1, f"{len(shown)} source images of {series} have InstanceNumber {instance_number}"
    mask = seg_mask_of_image(seg, support.read_header(shown[0]).SOPInstanceUID)
    assert mask.any(), (
        f"OHIF shows image {instance_number} where the SEG has no set pixel; the colour check would prove nothing"
    )
    dice = overlay_dice(out / "after-seg.png", box, mask)
    flipped = {
        "left-right": overlay_dice(out / "after-seg.png", box, mask[:, ::-1]),
        "up-down": overlay_dice(out / "after-seg.png", box, mask[::-1, :]),
    }
    print(f"{series}: Dice(drawn, SEG on image {instance_number}) = {dice:.4f}; flipped: "
          + ", ".join(f"{k} {v:.4f}" for k, v in flipped.items()))
    assert dice >= MIN_OVERLAY_DICE, (
        f"the segmentation OHIF draws on image {instance_number} matches the SEG's mask with Dice {dice:.3f} "
        f"< {MIN_OVERLAY_DICE} (flipped masks: {flipped}); see {out / 'after-seg.png'}"
    )

    # The planar report (sr-planar): opening it in OHIF jumps to the image its outline is drawn
    # on, draws the outline (OHIF draws SR annotations in pure green, absent from the images
    # before), and labels it with the report's Area.
    measured = planar_measurements(planar_sr)
    assert measured, "the planar SR has no Area with an outlined image"
    text = report.get("planarBodyText", "")
    for area, _ in measured:
        assert f"Area: {area:.2f} cm2" in text, f"OHIF does not show 'Area: {area:.2f} cm2' for the planar SR: {text[-1500:]}"
    m = re.search(r"I:\s*(\d+)", report.get("overlayPlanar", ""))
    assert m, f"no InstanceNumber in the viewport overlay {report.get('overlayPlanar')!r}"
    by_instance = {int(support.read_header(f).InstanceNumber): support.read_header(f).SOPInstanceUID for f in files}
    assert by_instance.get(int(m.group(1))) in {uid for _, uid in measured}, (
        f"OHIF shows image {m.group(1)}, not the image the planar outline is drawn on"
    )
    box = report.get("viewportPlanar") or box
    before = colour_pixels(out / "before-seg.png", box, SR_ANNOTATION_RGB)
    drawn = colour_pixels(out / "planar-sr.png", box, SR_ANNOTATION_RGB)
    print(f"{series}: planar SR outline {drawn} px of {SR_ANNOTATION_RGB} (before any overlay: {before}); "
          f"areas {[round(a, 3) for a, _ in measured]} cm2")
    assert drawn >= MIN_COLOUR_PIXELS and before * 50 <= drawn, (
        f"planar outline not drawn: {drawn} px of {SR_ANNOTATION_RGB} (before: {before}); see {out / 'planar-sr.png'}"
    )
