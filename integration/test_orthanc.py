"""Orthanc as the PACS: the node delivers its results to a real archive, and an
archive outage in the middle of delivery loses and duplicates nothing.

Orthanc (Debian package `orthanc`, 1.10 on Debian 12) is started by each test
through integration/orthanc.py, with its own configuration and storage folder
in a temporary directory (DICOM and HTTP ports free, RemoteAccessAllowed false,
no authentication, no plugins).
Orthanc 1.10 cannot be told to bind 127.0.0.1 only, so these tests run only in
a loopback-only network namespace (as scripts/test.sh runs the suite) and are
skipped with the reason otherwise. What the archive holds is read back through
its REST API (PS3.18-style JSON of Orthanc: /studies, /series, /instances).

`UnknownSopClassAccepted` is on because Orthanc 1.10 predates Label Map
Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7, Sup 243, 2024): without it,
it refuses LABELMAP SEGs (the node then dead-letters them; see tests/delivery.rs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import orthanc as orthanc_mod
import support

LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _failed(request) -> bool:
    """True when the test's setup or call failed (reports recorded by conftest's hook)."""
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


pytestmark = pytest.mark.skipif(
    orthanc_mod.isolation_problem() is not None or orthanc_mod.installation_problem(dicomweb=False) is not None,
    reason=orthanc_mod.isolation_problem() or orthanc_mod.installation_problem(dicomweb=False) or "",
)


@pytest.fixture
def orthanc(tmp_path: Path, request):
    """A started Orthanc (integration/orthanc.py, no plugins) with its state under tmp_path/orthanc."""
    o = orthanc_mod.start(tmp_path / "orthanc", dicomweb=False)
    try:
        yield o
    finally:
        o.stop()
        if _failed(request):
            print(f"\n----- Orthanc log ({o.log}) -----\n{o.log_text()[-20000:]}")


# ------------------------------------------------------------------ node
def start_node(tmp_path: Path, node_bin: Path, orthanc: orthanc_mod.Orthanc, outputs: list[str], **overrides: str) -> support.Node:
    """`myonode serve` whose only destination is `orthanc` (short retry delays)."""
    return support.launch_node(
        node_bin,
        tmp_path / "node",
        "[[destinations]]\n"
        'name = "orthanc"\n'
        'ae_title = "ORTHANC"\n'
        'host = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n"
        "max_attempts = 30\n"
        "retry_delay_seconds = 0.2\n"
        f"outputs = {json.dumps(outputs)}\n",
        **overrides,
    )


@pytest.fixture
def nodes(request):
    started: list[support.Node] = []
    yield started
    for n in started:
        status = support.stop(n.proc)
        if _failed(request):
            print(f"\n----- myonode log ({n.log}, exit status {status}) -----\n{n.log_text()[-20000:]}")


def job_results(node: support.Node) -> dict[str, dict]:
    """SOPInstanceUID → {"sop_class_uid", "study_uid"} of every object the node's jobs produced
    for delivery (from jobs/*/job.json)."""
    out = {}
    for job in sorted((node.spool / "jobs").glob("*/job.json")):
        summary = json.loads(job.read_text())
        for key in ("seg", "seg_labelmap", "sr", "sr_labelmap"):
            obj = summary.get(key)
            if obj:
                out[obj["sop_instance_uid"]] = {
                    "sop_class_uid": obj["sop_class_uid"],
                    "study_uid": summary["study_instance_uid"],
                }
    return out


def send_series(node: support.Node, folder: Path) -> None:
    result = support.storescu(node.port, node.ae_title, [folder], extra=["-xv"])
    assert result.returncode == 0, support.describe(result)


# ------------------------------------------------------------------ tests
def test_orthanc_stores_seg_and_sr_in_the_source_study(tmp_path: Path, node_bin: Path, data_dir: Path, orthanc: orthanc_mod.Orthanc, nodes):
    knee = data_dir / "series" / "mr-knee-dess-echo1"
    # The source series is in the archive first, as at a site.
    result = support.storescu(orthanc.dicom_port, "ORTHANC", [knee])
    assert result.returncode == 0, support.describe(result)
    source = support.read_header(support.dicom_files(knee)[0])
    studies = orthanc.get("/studies?expand")
    assert len(studies) == 1
    study = studies[0]
    assert study["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID

    node = start_node(tmp_path, node_bin, orthanc, ["seg-binary", "seg-labelmap", "sr"])
    nodes.append(node)
    send_series(node, knee)

    def delivered():
        series = orthanc.get(f"/studies/{study['ID']}/series")
        return series if len(series) >= 4 else None

    series = support.wait_for("SEG (BINARY and LABELMAP) and SR in Orthanc's study", delivered, alive=node.problem)
    modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
    assert modalities == ["MR", "SEG", "SEG", "SR"], modalities
    assert len(orthanc.get("/studies")) == 1, "results must land in the source study, not a new one"

    expected = job_results(node)
    assert {v["sop_class_uid"] for v in expected.values()} == {
        SEGMENTATION_STORAGE,
        LABEL_MAP_SEGMENTATION_STORAGE,
        COMPREHENSIVE_3D_SR,
    }, expected
    stored = {i["sop_instance_uid"]: i for i in orthanc.instance_summaries()}
    for uid, obj in expected.items():
        assert uid in stored, f"{obj['sop_class_uid']} {uid} not in Orthanc"
        assert stored[uid]["sop_class_uid"] == obj["sop_class_uid"]
        assert stored[uid]["study_uid"] == source.StudyInstanceUID
    support.wait_for("the outbox to drain", lambda: not support.files_under(node.spool / "outbox"), timeout=60)
    assert not support.files_under(node.spool / "failed")


def test_orthanc_outage_mid_delivery_delivers_every_object_exactly_once(
    tmp_path: Path, node_bin: Path, data_dir: Path, orthanc: orthanc_mod.Orthanc, nodes
):
    node = start_node(tmp_path, node_bin, orthanc, ["seg-binary", "sr"])
    nodes.append(node)
    series = [data_dir / "series" / s for s in ("mr-pelvis-adc", "mr-knee-dess-echo2", "ct-abdomen-j2k")]

    # First job: wait until its first object is in the archive, then crash the archive.
    send_series(node, series[0])
    support.wait_for("the first result in Orthanc", lambda: orthanc.get("/instances"), alive=node.problem)
    orthanc.kill()
    killed_with = len(support.files_under(node.spool / "sent"))

    # More jobs while the archive is down: their deliveries must fail and wait.
    for folder in series[1:]:
        send_series(node, folder)
    support.wait_for(
        "every job to be encoded",
        lambda: len(list((node.spool / "jobs").glob("*/job.json"))) == len(series) or None,
        alive=node.problem,
    )
    support.wait_for(
        "a failed delivery attempt while Orthanc is down",
        lambda: "delivery failed; will retry" in node.log_text(),
        timeout=60,
        alive=node.problem,
    )
    assert support.files_under(node.spool / "outbox"), "objects must wait in the outbox while Orthanc is down"

    # The archive comes back on the same storage; the queue's backoff delivers the rest.
    orthanc.start()
    expected = job_results(node)
    assert len(expected) == 2 * len(series), expected
    support.wait_for("the outbox to drain", lambda: not support.files_under(node.spool / "outbox"), alive=node.problem)

    stored = orthanc.instance_summaries()
    counts: dict[str, int] = {}
    for i in stored:
        counts[i["sop_instance_uid"]] = counts.get(i["sop_instance_uid"], 0) + 1
    assert set(counts) == set(expected), f"archive holds {sorted(counts)}, node produced {sorted(expected)}"
    assert all(n == 1 for n in counts.values()), counts
    # The node's own ledger agrees: each object sent once, nothing dead-lettered.
    sent = [p.name for p in support.files_under(node.spool / "sent")]
    assert sorted(sent) == sorted(f"{uid}.dcm" for uid in expected), sent
    assert not support.files_under(node.spool / "failed")
    assert killed_with < len(expected), "the outage must have happened mid-delivery"
