"""End-to-end tests of series completion in the assemble stage (issue #3).

A series is complete at the first of: its quiet period, the end of the association that
delivered it (after a grace period), the image count its headers announce, a maximum wait.
These tests make every rule but the one under test unreachable (an hour) and check that the
series is still processed.
"""

from __future__ import annotations

from pathlib import Path

import support
from support import Node, Pacs, describe

HOUR = "3600"


def test_series_completes_at_association_end(start_node, pacs: Pacs, data_dir: Path):
    """Quiet period and maximum wait are an hour: only the end of the storing association
    (plus the 2 s default grace period) can complete the series. The CT's headers state no
    ImagesInAcquisition, so the expected-count rule cannot fire either."""
    node: Node = start_node(ASSEMBLE__QUIET_PERIOD_SECONDS=HOUR, ASSEMBLE__MAX_WAIT_SECONDS=HOUR)
    folder = data_dir / "series" / "ct-abdomen-j2k"
    assert all(support.read_header(f).get("ImagesInAcquisition") is None for f in support.dicom_files(folder))

    sent = support.storescu(node.port, node.ae_title, [folder], "SCANNER", ["-xv"])
    assert sent.returncode == 0, describe(sent)

    support.wait_for("a DICOM-SEG at the PACS", pacs.segs, timeout=300, alive=node.problem)
    log = node.log_text()
    assert "completed_by" in log and "association_ended" in log, "the log names the completion rule"
    assert len(pacs.segs()) == 1


def _write_dixon_series(src_files: list, out: Path, kind: str, image_type: list, transform) -> str:
    """Knee slices as one Dixon channel series: real pixels transformed by `transform`, GENERATED
    headers (new SeriesInstanceUID / SOPInstanceUIDs, Dixon ImageType, SeriesDescription);
    same study and FrameOfReferenceUID as the knee."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True)
    series_uid = generate_uid()
    for i, f in enumerate(src_files):
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.astype(np.int32)
        ds.PixelData = np.asarray(transform(px), dtype=np.int16).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = image_type
        ds.SeriesDescription = f"t1_dixon_{kind}"
        ds.SeriesNumber = 900 + len(kind)
        ds.save_as(out / f"{i:03d}.dcm", enforce_file_format=True)
    return series_uid


def test_dixon_series_become_one_job(start_node, pacs: Pacs, data_dir: Path, tmp_path: Path):
    """Four Dixon channel series (generated from the knee, see _write_dixon_series) sent in one
    association become ONE job: one SEG, referencing the water series, and dixon.json naming all
    four channels with in-phase = water + fat. The study window is an hour, so only pairing (all
    four kinds present) can release the job."""
    import json

    node: Node = start_node(ASSEMBLE__STUDY_WINDOW_SECONDS=HOUR)
    src = support.dicom_files(data_dir / "series" / "mr-knee-dess-echo1")[30:36]
    uids = {}
    specs = {
        "water": (["DERIVED", "PRIMARY", "DIXON", "WATER"], lambda p: p),
        "fat": (["DERIVED", "PRIMARY", "DIXON", "FAT"], lambda p: p // 4),
        "in": (["DERIVED", "PRIMARY", "DIXON", "IN_PHASE"], lambda p: p + p // 4),
        "opp": (["DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"], lambda p: abs(p - p // 4)),
    }
    for kind, (image_type, f) in specs.items():
        uids[kind] = _write_dixon_series(src, tmp_path / "dixon" / kind, kind, image_type, f)

    sent = support.storescu(node.port, node.ae_title, [tmp_path / "dixon"], "SCANNER")
    assert sent.returncode == 0, describe(sent)

    support.wait_for("a DICOM-SEG at the PACS", pacs.segs, timeout=300, alive=node.problem)
    segs = pacs.segs()
    assert len(segs) == 1, f"one job for the four series, got {[p.name for p in segs]}"
    seg = support.read_header(segs[0])
    assert {str(i.SeriesInstanceUID) for i in seg.ReferencedSeriesSequence} == {uids["water"]}
    job = support.wait_for("the job folder of the SEG", lambda: node.job_dir_of_seg(seg.SOPInstanceUID), timeout=30)
    dixon = json.loads((job / "dixon.json").read_text())
    assert {c["kind"]: c["series_instance_uid"] for c in dixon["channels"]} == {
        "water": uids["water"],
        "fat": uids["fat"],
        "in_phase": uids["in"],
        "opposed_phase": uids["opp"],
    }
    assert dixon["in_phase_residual_ratio"] == 0.0 and dixon["consistent"] is True
    assert len(list((node.spool / "jobs").glob("*/seg.dcm"))) == 1


def test_dixon_job_reports_fat_fraction_through_the_node(start_node, pacs: Pacs, data_dir: Path, tmp_path: Path):
    """Dixon pairing (#3) feeding the fat-fraction measurement and the Dixon tissue analysis (#6)
    end to end. Channels generated from knee pixels p with GENERATED headers (see
    _write_dixon_series): water = 3p, fat = p, in-phase = 4p, opposed-phase = 2p, so the
    voxel-wise fat fraction F / (F + W) is exactly 25 % wherever there is signal. The node runs
    `dixon-composition-mr`: everything with signal is water-dominant (muscle, FF < 50 %), the
    fat segment stays empty; the muscle segment's mean fat fraction in measurements.json and
    in the SR (129100, DCM) must be 25 %."""
    import json
    import math

    import highdicom as hd

    node: Node = start_node(ASSEMBLE__STUDY_WINDOW_SECONDS=HOUR, SEGMENT__ANALYSIS="dixon-composition-mr")
    src = support.dicom_files(data_dir / "series" / "mr-knee-dess-echo1")[36:42]
    specs = {
        "water": (["DERIVED", "PRIMARY", "DIXON", "WATER"], lambda p: 3 * p),
        "fat": (["DERIVED", "PRIMARY", "DIXON", "FAT"], lambda p: p),
        "in": (["DERIVED", "PRIMARY", "DIXON", "IN_PHASE"], lambda p: 4 * p),
        "opp": (["DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"], lambda p: 2 * p),
    }
    for kind, (image_type, f) in specs.items():
        _write_dixon_series(src, tmp_path / "dixon" / kind, kind, image_type, f)
    sent = support.storescu(node.port, node.ae_title, [tmp_path / "dixon"], "SCANNER")
    assert sent.returncode == 0, describe(sent)

    support.wait_for("a DICOM-SEG at the PACS", pacs.segs, timeout=300, alive=node.problem)
    seg = support.read_header(pacs.segs()[0])
    job = support.wait_for("the job folder of the SEG", lambda: node.job_dir_of_seg(seg.SOPInstanceUID), timeout=30)
    measurements = {m["label"]: m for m in json.loads((job / "measurements.json").read_text())}
    muscle = measurements["Skeletal muscle"]
    assert muscle["voxel_count"] > 0
    assert math.isclose(muscle["fat_fraction_percent"], 25.0, abs_tol=1e-3), muscle["fat_fraction_percent"]
    sr_path = job / "sr.dcm"
    sr = hd.sr.srread(sr_path)
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    got = {x.name.value: float(x.value) for x in groups["Skeletal muscle"].get_measurements()}
    assert math.isclose(got["129100"], muscle["fat_fraction_percent"], rel_tol=1e-9), got


def _write_overcounted_series(data_dir: Path, out: Path) -> Path:
    """12 knee slices (real pixels) as a new series whose GENERATED headers (new UIDs) say
    ImagesInAcquisition = 5."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True)
    series_uid = generate_uid()
    for i, f in enumerate(support.dicom_files(data_dir / "series" / "mr-knee-dess-echo1")[30:42]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagesInAcquisition = 5
        ds.save_as(out / f"{i:03d}.dcm", enforce_file_format=True)
    return out


def test_more_images_than_announced_make_one_new_version_not_one_per_instance(
        start_node, pacs: Pacs, data_dir: Path, tmp_path: Path):
    """12 knee slices whose headers (GENERATED: new UIDs, ImagesInAcquisition = 5) announce 5
    images, sent in one association. The expected-count rule completes version 1 at the 5th
    image (it cannot know better yet); from the 6th on the count is known wrong, the rule stops
    applying to the series and the end of the association completes ONE version 2 with all 12.
    Before the fix every further instance completed a version of its own (8 SEGs)."""
    import time

    import pydicom

    node: Node = start_node(ASSEMBLE__QUIET_PERIOD_SECONDS=HOUR, ASSEMBLE__MAX_WAIT_SECONDS=HOUR)
    out = _write_overcounted_series(data_dir, tmp_path / "series")

    # in slice order, so version 1 (the first 5) is a regular volume too
    sent = support.storescu(node.port, node.ae_title, sorted(out.iterdir()), "SCANNER")
    assert sent.returncode == 0, describe(sent)
    support.wait_for("two DICOM-SEGs at the PACS", lambda: len(pacs.segs()) >= 2, timeout=300, alive=node.problem)
    time.sleep(3)  # room for any further (wrong) version to arrive
    segs = [pydicom.dcmread(p) for p in pacs.segs()]
    frames = sorted(len({tuple(map(float, fg.PlanePositionSequence[0].ImagePositionPatient))
                         for fg in s.PerFrameFunctionalGroupsSequence}) for s in segs)
    assert len(segs) == 2, f"{len(segs)} SEGs (one per version) for one series"
    assert frames[-1] == 12, f"slices covered by the SEGs: {frames}"
    log = node.log_text()
    assert "more images than ImagesInAcquisition" in log
    versions = sorted(p.name.rsplit("-v", 1)[1] for p in (node.spool / "jobs").iterdir())
    assert versions == ["1", "2"], versions


def test_process_completes_each_series_once_when_its_input_ends(node_bin: Path, data_dir: Path, tmp_path: Path):
    """Offline `myonode process` knows every file will come: no completion rule applies while
    the folder is read, so the series of _write_overcounted_series (5 images announced, 12
    present) gives ONE job with all 12 slices, not a partial version at the 5th file."""
    import json

    folder = _write_overcounted_series(data_dir, tmp_path / "series")
    env = support.clean_env()
    env["MYONODE__SPOOL__DIR"] = str(tmp_path / "spool")
    result = support.run([node_bin, "process", folder, "--out", tmp_path / "out"], timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    jobs = sorted((tmp_path / "out" / "jobs").iterdir())
    assert [j.name.rsplit("-v", 1)[1] for j in jobs] == ["1"], jobs
    assert json.loads((jobs[0] / "job.json").read_text())["volume"]["shape_zyx"][0] == 12
