#!/usr/bin/env python3
"""Validate a myonode TID 1500 measurement report (Comprehensive 3D SR).

Usage: check_sr.py SR_FILE --expect EXPECT.json

Checks, in order (the first failing check ends the run with exit status 1):
1. dicom3tools ``dciodvfy`` (found beside this interpreter or on PATH): any output line
   starting with "Error" fails. One exception, reported as a known validator limitation:
   when every expected SEG is a LABELMAP SEG (Label Map Segmentation Storage
   1.2.840.10008.5.1.4.1.1.66.7, Sup 243), the line "Shall not be present for Referenced
   SOP Class that is not segmentation - attribute <ReferencedSegmentNumber>" — dciodvfy
   20260927 counts only Segmentation Storage (.66.4) as a segmentation in that condition,
   while highdicom 0.28 (``ReferencedSegment``) accepts both SOP classes.
2. DCMTK ``dsrdump -v +Pt``: a non-zero exit status fails (for reports referencing only
   LABELMAP SEGs, which DCMTK 3.6.7 does not know, with ``-Ee``; any "E:" line fails).
2b. PixelMed ``com.pixelmed.validate.DicomSRValidator`` (checks TID 1500/1411 rows), when
   ``pixelmed.jar`` is present (env MYONODE_PIXELMED_JAR, default /usr/share/java/pixelmed.jar,
   Debian package libpixelmed-java) and ``java`` is on PATH: any line starting with "Error"
   fails. Without them this optional check is reported as SKIPPED.
3. pydicom + highdicom: the file is read with ``highdicom.sr.srread`` (must be a
   Comprehensive3DSR), the content parsed as a ``MeasurementReport``, and every
   volumetric ROI measurement group compared with EXPECT.json: tracking identifier,
   finding / finding site / laterality codes, referenced SEG SOP instance and segment
   number, source series, measurement concept codes, units, derivation and values
   (to DS precision: relative 1e-9 or absolute 1e-12).

EXPECT.json:
{
  "study_instance_uid": str, "source_series_instance_uid": str, "patient_name": str,
  "procedure_reported": {"value": str, "scheme": str},
  "segments": [
    {"label": str, "segment_number": int,
     "seg_sop_class_uid": str, "seg_sop_instance_uid": str,
     "finding": {"value", "scheme"}, "finding_site": {...} | null, "laterality": {...} | null,
     "measurements": [{"concept": {...}, "unit": {...}, "value": float, "derivation": {...} | null}]}
  ]
}
Missing tools or Python packages fail with exit status 2 and a clear message.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys


class CheckFailed(Exception):
    pass


def find_tool(name: str) -> str:
    """The executable `name` beside this interpreter (venv bin) or on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(local) and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    if found is None:
        print(f"check_sr: required tool '{name}' not found (looked in {os.path.dirname(sys.executable)} and PATH)",
              file=sys.stderr)
        sys.exit(2)
    return found


LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
DCIODVFY_LABELMAP_LIMITATION = (
    "Error - Shall not be present for Referenced SOP Class that is not segmentation"
    " - attribute <ReferencedSegmentNumber>"
)


def run_dciodvfy(path: str, labelmap_reference: bool = False) -> None:
    exe = find_tool("dciodvfy")
    proc = subprocess.run([exe, path], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    if labelmap_reference:
        known = [line for line in errors if line.strip() == DCIODVFY_LABELMAP_LIMITATION]
        for line in known:
            print(f"dciodvfy: known limitation (LABELMAP is a segmentation, Sup 243): {line}")
        errors = [line for line in errors if line.strip() != DCIODVFY_LABELMAP_LIMITATION]
    for line in out.splitlines():
        if line.startswith("Warning"):
            print(f"dciodvfy: {line}")
    if errors:
        raise CheckFailed("dciodvfy reported errors:\n" + "\n".join(errors) + "\n--- full output ---\n" + out)


def run_dsrdump(path: str, labelmap_reference: bool = False) -> str:
    exe = find_tool("dsrdump")
    # DCMTK 3.6.7 does not know Label Map Segmentation Storage and stops at an IMAGE item
    # referencing it ("Invalid or unknown image SOP class"): for such reports, parse on past
    # content item errors (-Ee) and fail only if an error other than that one is printed.
    extra = ["-Ee"] if labelmap_reference else []
    proc = subprocess.run([exe, "-v", "+Pt", *extra, path], capture_output=True, text=True)
    if labelmap_reference:
        other = [
            line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("E:")
        ]
        if other:
            raise CheckFailed("dsrdump reported errors:\n" + "\n".join(other))
    if proc.returncode != 0:
        raise CheckFailed(f"dsrdump exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def run_pixelmed(path: str) -> None:
    jar = os.environ.get("MYONODE_PIXELMED_JAR", "/usr/share/java/pixelmed.jar")
    java = shutil.which("java")
    if not os.path.isfile(jar) or java is None:
        print(f"pixelmed: SKIPPED (optional; needs {jar} and java)")
        return
    classpath = jar + os.pathsep + os.path.join(os.path.dirname(jar), "*")
    limits = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]
    proc = subprocess.run([java, *limits, "-cp", classpath, "com.pixelmed.validate.DicomSRValidator", path],
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    if errors or "Root Template Validation Complete" not in out:
        raise CheckFailed("PixelMed DicomSRValidator:\n" + "\n".join(errors or out.splitlines()[-20:]))
    print("pixelmed: TID 1500 validation without errors")


def same_code(actual, expected: dict | None, what: str) -> None:
    if expected is None:
        if actual is not None:
            raise CheckFailed(f"{what}: expected none, found {actual}")
        return
    if actual is None:
        raise CheckFailed(f"{what}: expected {expected}, found none")
    if actual.value != expected["value"] or actual.scheme_designator != expected["scheme"]:
        raise CheckFailed(
            f"{what}: expected ({expected['value']}, {expected['scheme']}), "
            f"found ({actual.value}, {actual.scheme_designator}, {actual.meaning!r})")


def close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)


def check_content(path: str, expect: dict) -> None:
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as e:  # pragma: no cover - environment problem
        print(f"check_sr: highdicom/pydicom not importable with {sys.executable}: {e}", file=sys.stderr)
        sys.exit(2)

    sr = hd.sr.srread(path)
    if not isinstance(sr, hd.sr.Comprehensive3DSR):
        raise CheckFailed(f"expected a Comprehensive3DSR, got {type(sr).__name__}")
    if sr.Modality != "SR":
        raise CheckFailed(f"Modality {sr.Modality!r} != 'SR'")
    if sr.StudyInstanceUID != expect["study_instance_uid"]:
        raise CheckFailed(f"StudyInstanceUID {sr.StudyInstanceUID} != {expect['study_instance_uid']}")
    if str(sr.PatientName) != expect["patient_name"]:
        raise CheckFailed(f"PatientName {str(sr.PatientName)!r} != {expect['patient_name']!r}")
    for attr, val in (("CompletionFlag", "COMPLETE"), ("VerificationFlag", "UNVERIFIED")):
        if getattr(sr, attr) != val:
            raise CheckFailed(f"{attr} {getattr(sr, attr)!r} != {val!r}")
    tpl = sr.ContentTemplateSequence[0]
    if (tpl.MappingResource, tpl.TemplateIdentifier) != ("DCMR", "1500"):
        raise CheckFailed(f"root template {tpl.MappingResource}/{tpl.TemplateIdentifier} != DCMR/1500")

    # Evidence must list the SEG(s) and the source series.
    evidence_series = {
        s.SeriesInstanceUID: {r.ReferencedSOPInstanceUID for r in s.ReferencedSOPSequence}
        for st in sr.CurrentRequestedProcedureEvidenceSequence for s in st.ReferencedSeriesSequence
    }
    if expect["source_series_instance_uid"] not in evidence_series:
        raise CheckFailed("source series missing from CurrentRequestedProcedureEvidenceSequence")
    evidence_instances = set().union(*evidence_series.values())

    report = hd.sr.MeasurementReport.from_sequence([sr], is_root=True)
    procs = [i for i in sr.ContentSequence
             if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    if len(procs) != 1:
        raise CheckFailed(f"expected one 'Procedure reported' item, found {len(procs)}")
    same_code(hd.sr.CodedConcept.from_dataset(procs[0].ConceptCodeSequence[0]),
              expect["procedure_reported"], "Procedure reported")

    groups = report.get_volumetric_roi_measurement_groups()
    if len(groups) != len(expect["segments"]):
        raise CheckFailed(f"{len(groups)} volumetric measurement groups, expected {len(expect['segments'])}")
    for group, exp in zip(groups, expect["segments"]):
        where = f"group {exp['label']!r}"
        if group.tracking_identifier != exp["label"]:
            raise CheckFailed(f"{where}: tracking identifier {group.tracking_identifier!r}")
        if not group.tracking_uid:
            raise CheckFailed(f"{where}: no tracking unique identifier")
        same_code(group.finding_type, exp["finding"], f"{where}: finding")
        sites = group.finding_sites
        if exp["finding_site"] is None:
            if sites:
                raise CheckFailed(f"{where}: unexpected finding site {sites[0].value}")
        else:
            if len(sites) != 1:
                raise CheckFailed(f"{where}: expected one finding site, found {len(sites)}")
            same_code(sites[0].value, exp["finding_site"], f"{where}: finding site")
            same_code(sites[0].laterality, exp["laterality"], f"{where}: laterality")
        ref = group.referenced_segment
        if ref is None:
            raise CheckFailed(f"{where}: no Referenced Segment")
        if ref.referenced_sop_instance_uid != exp["seg_sop_instance_uid"]:
            raise CheckFailed(f"{where}: referenced SOP instance {ref.referenced_sop_instance_uid}")
        if ref.referenced_sop_class_uid != exp["seg_sop_class_uid"]:
            raise CheckFailed(f"{where}: referenced SOP class {ref.referenced_sop_class_uid}")
        if exp["seg_sop_instance_uid"] not in evidence_instances:
            raise CheckFailed(f"{where}: SEG missing from the evidence sequence")
        if ref.referenced_segment_numbers != [exp["segment_number"]]:
            raise CheckFailed(f"{where}: referenced segment numbers {ref.referenced_segment_numbers} "
                              f"!= [{exp['segment_number']}]")
        src = ref.source_series_for_segmentation
        if src is None or src.value != expect["source_series_instance_uid"]:
            raise CheckFailed(f"{where}: source series for segmentation {src.value if src else None}")
        measurements = group.get_measurements()
        if len(measurements) != len(exp["measurements"]):
            raise CheckFailed(f"{where}: {len(measurements)} measurements, expected {len(exp['measurements'])}")
        for m, em in zip(measurements, exp["measurements"]):
            mw = f"{where}: measurement {em['concept']['value']}"
            same_code(m.name, em["concept"], f"{mw} concept")
            same_code(m.unit, em["unit"], f"{mw} unit")
            same_code(m.derivation, em["derivation"], f"{mw} derivation")
            mv = m[0].MeasuredValueSequence[0]
            ds = str(mv.NumericValue.original_string if hasattr(mv.NumericValue, "original_string")
                     else mv.NumericValue)
            if len(ds.strip()) > 16:
                raise CheckFailed(f"{mw}: NumericValue {ds!r} longer than 16 characters")
            if not close(float(ds), em["value"]):
                raise CheckFailed(f"{mw}: NumericValue {ds} != {em['value']!r}")
            if not close(float(m.value), em["value"]):
                raise CheckFailed(f"{mw}: value {m.value} != {em['value']!r}")
    _ = codes  # imported to make sure pydicom's code dictionary is available


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sr_file")
    ap.add_argument("--expect", required=True, help="EXPECT.json (see module docstring)")
    args = ap.parse_args()
    with open(args.expect, encoding="utf-8") as f:
        expect = json.load(f)
    try:
        labelmap_reference = bool(expect["segments"]) and all(
            s["seg_sop_class_uid"] == LABEL_MAP_SEGMENTATION_STORAGE for s in expect["segments"]
        )
        run_dciodvfy(args.sr_file, labelmap_reference)
        print("dciodvfy: no errors")
        dump = run_dsrdump(args.sr_file, labelmap_reference)
        print(f"dsrdump: ok ({len(dump.splitlines())} lines)")
        run_pixelmed(args.sr_file)
        check_content(args.sr_file, expect)
    except CheckFailed as e:
        print(f"check_sr: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"check_sr: OK ({len(expect['segments'])} measurement groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
