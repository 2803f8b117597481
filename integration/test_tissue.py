"""End-to-end: the built-in `tissue-composition-ct` analysis in the node's offline `process` mode
on the real CT series `series/ct-abdomen-j2k` (BodyPartExamined PARTIALBODY: trunk).

* Default configuration: the trunk is out of the analysis' scope, so the job fails with an
  ERROR.txt that names the reason and the key that allows it, and no SEG is written.
* With `segment.tissue_ct_allow_trunk = true`: a SEG with the three tissue segments (SNOMED CT
  codes, category Tissue) that passes check_seg.py, and an SR whose volumes and mean attenuations
  (read with highdicom) equal measurements.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import highdicom as hd
import support
from support import clean_env, describe

SERIES = "ct-abdomen-j2k"


def run_process(node_bin: Path, folder: Path, out: Path, cwd: Path, **overrides: str):
    env = clean_env()
    env["MYONODE__SPOOL__DIR"] = str(cwd / "spool")
    env["MYONODE__SEGMENT__ANALYSIS"] = "tissue-composition-ct"
    env.update({f"MYONODE__SEGMENT__{k.upper()}": v for k, v in overrides.items()})
    return support.run([node_bin, "process", folder, "--out", out], timeout=1800, env=env, cwd=cwd)


def test_tissue_ct_refuses_trunk_by_default(node_bin: Path, data_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = run_process(node_bin, data_dir / "series" / SERIES, out, tmp_path)
    errors = list(out.glob("jobs/*/ERROR.txt"))
    assert len(errors) == 1, f"expected one failed job, got {errors}\n" + describe(result)
    text = errors[0].read_text()
    assert "refuses this job" in text and "tissue_ct_allow_trunk" in text, text
    assert not list(out.glob("jobs/*/seg.dcm")), "no SEG may be written for an out-of-scope job"


def test_tissue_ct_with_trunk_allowed_writes_seg_and_sr_matching_json(
    node_bin: Path, data_dir: Path, tmp_path: Path, tools_python: Path
):
    folder = data_dir / "series" / SERIES
    out = tmp_path / "out"
    result = run_process(node_bin, folder, out, tmp_path, tissue_ct_allow_trunk="true")
    assert result.returncode == 0, describe(result)
    jobs = sorted(p.parent for p in out.glob("jobs/*/seg.dcm"))
    assert len(jobs) == 1, f"expected one job with seg.dcm, got {jobs}\n" + describe(result)
    job = jobs[0]

    seg = hd.seg.segread(job / "seg.dcm")
    described = [
        (s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
         s.SegmentedPropertyCategoryCodeSequence[0].CodeValue)
        for s in seg.SegmentSequence
    ]
    assert described == [
        ("Skeletal muscle", "127954009", "85756007"),
        ("Adipose tissue", "55603005", "85756007"),
        ("Bone", "3138006", "85756007"),
    ], described
    check = support.check_seg(job / "seg.dcm", job / "labels.npy", folder, tools_python)
    assert check.returncode == 0, "check_seg.py rejected the SEG\n" + describe(check)

    numbers = {m["label"]: m for m in json.loads((job / "measurements.json").read_text())}
    sr = hd.sr.srread(job / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == list(numbers), [g.tracking_identifier for g in groups]
    for g in groups:
        m = numbers[g.tracking_identifier]
        got = {x.name.value: float(x.value) for x in g.get_measurements()}
        assert math.isclose(got["118565006"], m["volume_ml"], rel_tol=1e-9), (got, m["volume_ml"])
        assert math.isclose(got["112031"], m["mean_attenuation_hu"], rel_tol=1e-9, abs_tol=1e-9), got
        assert "129100" not in got, "no fat fraction without Dixon channels"
