"""End-to-end tests of the walking skeleton: scanner (DCMTK storescu) → myonode
→ PACS (DCMTK storescp), plus the offline `process` mode and `check-config`.

Every test drives the real binary over real DICOM networking with the real
series from MYONODE_DATA. A DICOM-SEG result is judged by
integration/check_seg.py (dciodvfy, highdicom, references, geometry, mask ==
label map) and by the identity checks below (PS3.3 A.51: the SEG reuses the
source's Patient, Study and Frame of Reference and is a new series).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import support
from support import Node, Pacs, clean_env, describe, node_config_text


# ------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class SourceSeries:
    """Identity of a source series as read from its files."""

    folder: Path
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: frozenset
    rows: int
    columns: int


def read_source(folder: Path) -> SourceSeries:
    files = support.dicom_files(folder)
    assert files, f"no DICOM files under {folder}"
    headers = [support.read_header(p) for p in files]
    first = headers[0]
    series = {h.SeriesInstanceUID for h in headers}
    assert len(series) == 1, f"{folder} holds several series: {series}"
    return SourceSeries(
        folder=folder,
        patient_id=str(first.get("PatientID") or ""),  # the knee series has none (Type 2: empty)
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_instance_uids=frozenset(str(h.SOPInstanceUID) for h in headers),
        rows=int(first.Rows),
        columns=int(first.Columns),
    )


def assert_seg_identity(seg_path: Path, src: SourceSeries) -> pydicom.Dataset:
    """The SEG belongs to the source's patient, study and frame of reference, in a new series."""
    seg = support.read_header(seg_path)
    assert seg.SOPClassUID == support.SEGMENTATION_STORAGE
    assert seg.Modality == "SEG"
    assert str(seg.get("PatientID") or "") == src.patient_id
    assert seg.StudyInstanceUID == src.study_uid
    assert seg.FrameOfReferenceUID == src.frame_of_reference_uid
    assert seg.SeriesInstanceUID != src.series_uid, "SEG must be a new series"
    assert pydicom.uid.UID(seg.SeriesInstanceUID).is_valid
    assert seg.SOPInstanceUID not in src.sop_instance_uids
    referenced_series = {
        str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])
    }
    assert src.series_uid in referenced_series, (
        f"ReferencedSeriesSequence {referenced_series} lacks the source series {src.series_uid}"
    )
    return seg


def assert_label_map(labels_path: Path, src: SourceSeries) -> np.ndarray:
    """labels.npy is uint8 [z][y][x] on the source grid and not empty."""
    assert labels_path.is_file(), f"{labels_path} missing"
    labels = np.load(labels_path)
    assert labels.dtype == np.uint8, labels.dtype
    assert labels.shape == (len(src.sop_instance_uids), src.rows, src.columns), labels.shape
    assert labels.any(), "label map is empty: the analysis found nothing"
    return labels


def run_check_seg(seg: Path, labels: Path, src: SourceSeries, python: Path) -> None:
    result = support.check_seg(seg, labels, src.folder, python)
    assert result.returncode == 0, "check_seg.py rejected the SEG\n" + describe(result)


def write_basic_text_sr(path: Path) -> Dataset:
    """Write a minimal Basic Text SR (a storage SOP class the node does not accept)."""
    ds = Dataset()
    ds.SOPClassUID = support.BASIC_TEXT_SR_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "MYONODE-TEST"
    ds.PatientName = "Test^Unsupported"
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return ds


def first_file(folder: Path) -> Path:
    return support.dicom_files(folder)[0]


# ------------------------------------------------------------- (a) C-ECHO
def test_echoscu_verifies_the_node(node: Node):
    result = support.echoscu(node.port, node.ae_title)
    assert result.returncode == 0, describe(result)


# ---------------------------------------------- (b), (c) series → SEG → PACS
ROUND_TRIPS = [
    # (series folder, extra storescu arguments)
    pytest.param("mr-knee-dess-echo1", [], id="mr-knee-dess-echo1"),
    # JPEG 2000 lossless: propose it (-xv), storescu cannot transcode it.
    pytest.param("ct-abdomen-j2k", ["-xv"], id="ct-abdomen-j2k"),
]


@pytest.mark.parametrize("series, storescu_args", ROUND_TRIPS)
def test_series_round_trip_to_pacs(
    series: str, storescu_args: list, node: Node, pacs: Pacs, data_dir: Path, tools_python: Path
):
    src = read_source(data_dir / "series" / series)

    sent = support.storescu(node.port, node.ae_title, [src.folder], "SCANNER", storescu_args)
    assert sent.returncode == 0, describe(sent)

    support.wait_for("a DICOM-SEG at the PACS", pacs.segs, alive=node.problem)
    # The node files a delivered copy under sent/<destination>/ after the PACS answered success.
    support.wait_for(
        "the delivered copy under spool/sent/pacs/",
        lambda: support.files_under(node.spool / "sent" / "pacs"),
        alive=node.problem,
    )
    segs = pacs.segs()
    assert len(segs) == 1, f"expected one SEG at the PACS, got {[p.name for p in segs]}"
    seg = assert_seg_identity(segs[0], src)

    job = support.wait_for(
        "jobs/<job_id>/seg.dcm with the delivered SOPInstanceUID",
        lambda: node.job_dir_of_seg(seg.SOPInstanceUID),
        timeout=30,
    )
    assert_label_map(job / "labels.npy", src)
    json.loads((job / "job.json").read_text())
    run_check_seg(segs[0], job / "labels.npy", src, tools_python)
    assert_report_matches_job(pacs, seg, job, tools_python)

    assert not support.files_under(node.spool / "failed"), "nothing may be dead-lettered"
    assert node.proc.poll() is None, "node must keep running"


def _items(seq, concept):
    return [i for i in seq if i.ConceptNameCodeSequence[0].CodeValue == concept]


def assert_report_matches_job(pacs: Pacs, seg, job: Path, tools_python: Path):
    """The TID 1500 report arrives at the PACS, validates (dciodvfy, dsrdump), references the
    delivered SEG, and its volumes equal the node's measurements.json to DS precision."""
    srs = support.wait_for("a TID 1500 SR at the PACS", pacs.srs, timeout=60)
    assert len(srs) == 1, f"expected one SR at the PACS, got {srs}"
    sr_path = srs[0]
    env = dict(os.environ, PATH=f"{tools_python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    v = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True, env=env, timeout=300)
    errors = [l for l in (v.stdout + v.stderr).splitlines() if l.startswith("Error")]
    assert not errors, "dciodvfy errors in the SR:\n" + "\n".join(errors)
    d = subprocess.run(["dsrdump", "-v", "+Pt", str(sr_path)], capture_output=True, text=True, timeout=120)
    assert d.returncode == 0, d.stderr
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    measurements = {m["label"]: m for m in json.loads((job / "measurements.json").read_text())}
    (imaging,) = _items(sr.ContentSequence, "126010")
    groups = _items(imaging.ContentSequence, "125007")
    assert len(groups) == len(measurements), f"{len(groups)} groups for {sorted(measurements)}"
    for g in groups:
        (tracking,) = _items(g.ContentSequence, "112039")
        m = measurements[tracking.TextValue]
        (ref,) = _items(g.ContentSequence, "121191")
        sop = ref.ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID, "report must reference the delivered SEG"
        assert int(sop.ReferencedSegmentNumber) == m["label_value"]
        (vol,) = _items(g.ContentSequence, "118565006")
        value = float(vol.MeasuredValueSequence[0].NumericValue)
        assert value == pytest.approx(m["volume_ml"], rel=1e-9), f"{tracking.TextValue}: SR {value} vs JSON {m['volume_ml']}"


# ------------------------------------------------------- spool and duplicates
def test_instances_are_spooled_intact_and_duplicates_stored_once(start_node, data_dir: Path):
    """incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm holds each instance once,
    with the data set (including Pixel Data) exactly as sent. A long quiet period (and no completion
    at association end) keeps the series open, so nothing is processed (or cleaned up) while the
    spool is inspected."""
    node = start_node(ASSEMBLE__QUIET_PERIOD_SECONDS="3600", ASSEMBLE__COMPLETE_ON_ASSOCIATION_END="false")
    files = support.dicom_files(data_dir / "series" / "mr-knee-dess-echo1")[:5]

    for attempt in (1, 2):  # the second association repeats every SOPInstanceUID
        sent = support.storescu(node.port, node.ae_title, files, calling_ae="SCANNER")
        assert sent.returncode == 0, f"attempt {attempt}\n" + describe(sent)

    stored = node.incoming_files()
    expected = {}
    for f in files:
        ds = pydicom.dcmread(f)
        rel = Path(ds.StudyInstanceUID) / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        expected[rel] = ds
    got = {p.relative_to(node.spool / "incoming") for p in stored}
    assert got == set(expected), f"spool holds {sorted(map(str, got))}"
    for rel, src in expected.items():
        copy = pydicom.dcmread(node.spool / "incoming" / rel)
        assert copy.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
        assert copy.SOPClassUID == src.SOPClassUID
        assert copy.ImagePositionPatient == src.ImagePositionPatient
        assert copy.PixelData == src.PixelData, f"{rel}: Pixel Data differs from what was sent"


# ------------------------------------------------------------ (d) bad input
def test_calling_ae_not_in_allow_list_is_rejected(start_node, data_dir: Path):
    node = start_node(RECEIVE__ALLOWED_CALLING_AE_TITLES="SCANNER1,SCANNER2")
    one = first_file(data_dir / "series" / "mr-knee-dess-echo1")

    sent = support.storescu(node.port, node.ae_title, [one], calling_ae="INTRUDER")
    assert sent.returncode != 0, "storescu from a calling AE outside the allow-list must fail\n" + describe(sent)
    assert node.incoming_files() == [], "nothing may be stored for a rejected association"

    denied = support.echoscu(node.port, node.ae_title, calling_ae="INTRUDER")
    assert denied.returncode != 0, describe(denied)
    allowed = support.echoscu(node.port, node.ae_title, calling_ae="SCANNER2")
    assert allowed.returncode == 0, "an allowed calling AE must still associate\n" + describe(allowed)


def test_unsupported_sop_class_is_refused(node: Node, tmp_path: Path):
    sr_path = tmp_path / "report.dcm"
    sr = write_basic_text_sr(sr_path)

    sent = support.storescu(node.port, node.ae_title, [sr_path])
    assert sent.returncode != 0, "storing a Basic Text SR must fail (presentation context rejected)\n" + describe(
        sent
    )
    stored = node.incoming_files()
    assert stored == [], f"nothing may be stored, found {stored}"
    assert not any(sr.SOPInstanceUID in str(p) for p in support.files_under(node.spool))

    echo = support.echoscu(node.port, node.ae_title)
    assert echo.returncode == 0, describe(echo)


@pytest.mark.parametrize("case", ["notavolume", "sliceorientation"])
def test_series_that_is_not_a_volume_is_quarantined(case: str, node: Node, pacs: Pacs, data_dir: Path):
    folder = data_dir / "awkward" / case
    series_uids = {support.read_header(p).SeriesInstanceUID for p in support.dicom_files(folder)}
    assert len(series_uids) == 1
    (series_uid,) = series_uids

    sent = support.storescu(node.port, node.ae_title, [folder])
    assert sent.returncode == 0, "the instances themselves are valid and must be stored\n" + describe(sent)

    reason = support.wait_for(
        f"quarantine/{series_uid}/REASON.txt", lambda: node.quarantine_reason(series_uid), alive=node.problem
    )
    text = reason.read_text().strip()
    assert text, "REASON.txt must say why"

    assert pacs.segs() == [], "no SEG may be sent for a quarantined series"
    assert not list((node.spool / "jobs").glob("*/seg.dcm")), "no SEG may be encoded"
    assert not support.files_under(node.spool / "outbox")

    echo = support.echoscu(node.port, node.ae_title)
    assert echo.returncode == 0, "node must still answer C-ECHO after quarantining\n" + describe(echo)


# ------------------------------------------------------- (e) offline process
def run_process(node_bin: Path, folder: Path, out: Path, cwd: Path):
    env = clean_env()
    env["MYONODE__SPOOL__DIR"] = str(cwd / "spool")
    return support.run([node_bin, "process", folder, "--out", out], timeout=1800, env=env, cwd=cwd)


def test_process_writes_a_valid_seg(node_bin: Path, data_dir: Path, tmp_path: Path, tools_python: Path):
    src = read_source(data_dir / "series" / "mr-knee-dess-echo1")
    out = tmp_path / "out"

    result = run_process(node_bin, src.folder, out, tmp_path)
    assert result.returncode == 0, describe(result)

    jobs = sorted(p.parent for p in out.glob("jobs/*/seg.dcm"))
    assert len(jobs) == 1, f"expected one job folder with seg.dcm under {out}, got {jobs}\n" + describe(result)
    job = jobs[0]
    assert_seg_identity(job / "seg.dcm", src)
    assert_label_map(job / "labels.npy", src)
    json.loads((job / "job.json").read_text())
    run_check_seg(job / "seg.dcm", job / "labels.npy", src, tools_python)


def test_process_quarantines_what_is_not_a_volume(node_bin: Path, data_dir: Path, tmp_path: Path):
    folder = data_dir / "awkward" / "notavolume"
    series_uid = support.read_header(first_file(folder)).SeriesInstanceUID
    out = tmp_path / "out"

    result = run_process(node_bin, folder, out, tmp_path)
    # The exit status for "nothing processable" is not part of the contract; the files are.
    reason = out / "quarantine" / series_uid / "REASON.txt"
    assert reason.is_file(), f"{reason} missing\n" + describe(result)
    assert reason.read_text().strip()
    assert not list(out.glob("jobs/*/seg.dcm")), "no SEG may be written for a quarantined series"


# ---------------------------------------------------------- (f) check-config
def check_config(node_bin: Path, cwd: Path, *args: str, **env_overrides: str):
    env = clean_env()
    env.update({f"MYONODE__{k}": v for k, v in env_overrides.items()})
    return support.run([node_bin, "check-config", *args], timeout=60, env=env, cwd=cwd)


def test_check_config_accepts_the_embedded_defaults(node_bin: Path, tmp_path: Path):
    result = check_config(node_bin, tmp_path)
    assert result.returncode == 0, describe(result)


def test_check_config_accepts_the_shipped_file(node_bin: Path, tmp_path: Path):
    result = check_config(node_bin, tmp_path, "--config", str(support.REPO / "conf" / "myonode.toml"))
    assert result.returncode == 0, describe(result)


@pytest.mark.parametrize(
    "variable, value, key",
    [
        ("ASSEMBLE__QUIET_PERIOD_SECONDS", "-1", "assemble.quiet_period_seconds"),
        ("RECEIVE__PORT", "not-a-port", "receive.port"),
        ("NODE__AE_TITLE", "THIS_TITLE_IS_MUCH_TOO_LONG", "node.ae_title"),
        ("SEGMENT__ANALYSIS", "no-such-analysis", "segment.analysis"),
    ],
)
def test_check_config_names_the_bad_key_from_env(node_bin: Path, tmp_path: Path, variable, value, key):
    result = check_config(node_bin, tmp_path, **{variable: value})
    assert result.returncode != 0, describe(result)
    assert key in result.stderr, f"stderr must name `{key}`\n" + describe(result)


def test_check_config_names_the_bad_key_from_file(node_bin: Path, tmp_path: Path):
    config = tmp_path / "bad.toml"
    config.write_text(node_config_text(pacs_port=104).replace("port = 104", "port = 0"))
    result = check_config(node_bin, tmp_path, "--config", str(config))
    assert result.returncode != 0, describe(result)
    assert "destinations[0].port" in result.stderr, describe(result)


# ------------------------------------------------------- echo SCU, shutdown
def test_echo_subcommand_verifies_a_peer(node_bin: Path, pacs: Pacs, tmp_path: Path):
    ok = support.run(
        [node_bin, "echo", "--host", "127.0.0.1", "--port", pacs.port, "--aet", pacs.ae_title],
        timeout=60,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, describe(ok)

    nobody = support.free_port()
    refused = support.run(
        [node_bin, "echo", "--host", "127.0.0.1", "--port", nobody, "--aet", "NOBODY"],
        timeout=120,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert refused.returncode != 0, "C-ECHO to a closed port must fail\n" + describe(refused)


def test_sigterm_stops_the_node_cleanly(node: Node):
    import signal
    import subprocess

    support.wait_for(
        "a 'listening on' line in the node's log", lambda: "listening on" in node.log_text(), timeout=60,
        alive=node.problem,
    )
    node.proc.send_signal(signal.SIGTERM)
    try:
        status = node.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("myonode did not exit within 60 s of SIGTERM")
    assert status == 0, f"exit status {status} after SIGTERM\n{node.log_text()}"
