"""Orthanc as the PACS: the node delivers its results to a real archive, and an
archive outage in the middle of delivery loses and duplicates nothing.

Orthanc (Debian package `orthanc`, 1.10 on Debian 12) is started by each test
with its own configuration and storage folder in a temporary directory (DICOM
and HTTP ports free, RemoteAccessAllowed false, no authentication, no plugins).
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
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import support

LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _only_loopback() -> Optional[str]:
    """None when the only network interface is `lo`, else why the tests must be skipped."""
    try:
        interfaces = sorted(os.listdir("/sys/class/net"))
    except OSError as exc:
        return f"cannot list network interfaces ({exc})"
    if interfaces != ["lo"]:
        return (
            f"Orthanc 1.10 binds 0.0.0.0; run inside a loopback-only network namespace "
            f"(scripts/test.sh does; interfaces here: {interfaces})"
        )
    return None


def _failed(request) -> bool:
    """True when the test's setup or call failed (reports recorded by conftest's hook)."""
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


pytestmark = pytest.mark.skipif(_only_loopback() is not None, reason=_only_loopback() or "")


# ------------------------------------------------------------------ Orthanc
@dataclass
class Orthanc:
    """An Orthanc process: AE `ORTHANC` on `dicom_port`, REST on `http_port`, all state in `root`."""

    root: Path
    dicom_port: int
    http_port: int
    proc: Optional[subprocess.Popen] = None

    @property
    def config(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def log(self) -> Path:
        return self.root / "orthanc.log"

    def write_config(self) -> None:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "Name": "myonode-test",
                    "StorageDirectory": str(storage),
                    "IndexDirectory": str(storage),
                    "DicomAet": "ORTHANC",
                    "DicomPort": self.dicom_port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "UnknownSopClassAccepted": True,
                    "Plugins": [],
                    "StableAge": 1,
                },
                indent=1,
            )
        )

    def start(self) -> None:
        """Start (or restart on the same storage) and wait until REST answers."""
        assert self.proc is None or self.proc.poll() is not None, "Orthanc already running"
        with open(self.log, "a") as logf:
            self.proc = subprocess.Popen(
                [support.require_tool("Orthanc"), str(self.config)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        support.wait_for(
            f"Orthanc REST on port {self.http_port}",
            lambda: self._system_ok(),
            timeout=60,
            alive=lambda: None if self.proc.poll() is None else f"Orthanc exited with {self.proc.returncode}:\n{self.log_text()}",
        )
        support.wait_for(f"Orthanc DICOM on port {self.dicom_port}", lambda: support.port_accepts(self.dicom_port), timeout=30)

    def kill(self) -> None:
        """SIGKILL, as in a crash or power loss."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            support.stop(self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _system_ok(self) -> bool:
        try:
            return self.get("/system").get("DicomAet") == "ORTHANC"
        except OSError:
            return False

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def instances(self) -> list[dict]:
        """Every stored instance: {"id", "sop_instance_uid", "sop_class_uid", "series", "study_uid"}."""
        out = []
        for inst in self.get("/instances?expand"):
            tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
            out.append(
                {
                    "id": inst["ID"],
                    "sop_instance_uid": tags.get("SOPInstanceUID"),
                    "sop_class_uid": tags.get("SOPClassUID"),
                    "series": inst["ParentSeries"],
                    "study_uid": tags.get("StudyInstanceUID"),
                }
            )
        return out


@pytest.fixture
def orthanc(tmp_path: Path, request):
    root = tmp_path / "orthanc"
    root.mkdir()
    o = Orthanc(root, support.free_port(), support.free_port())
    o.write_config()
    o.start()
    try:
        yield o
    finally:
        o.stop()
        if _failed(request):
            print(f"\n----- Orthanc log ({o.log}) -----\n{o.log_text()[-20000:]}")


# ------------------------------------------------------------------ node
def start_node(tmp_path: Path, node_bin: Path, orthanc: Orthanc, outputs: list[str], **overrides: str) -> support.Node:
    """`myonode serve` whose only destination is `orthanc` (short retry delays)."""
    root = tmp_path / "node"
    root.mkdir()
    config = root / "myonode.toml"
    config.write_text(
        "[[destinations]]\n"
        'name = "orthanc"\n'
        'ae_title = "ORTHANC"\n'
        'host = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n"
        "max_attempts = 30\n"
        "retry_delay_seconds = 0.2\n"
        f"outputs = {json.dumps(outputs)}\n"
    )
    port = support.free_port()
    env = support.clean_env()
    env.update(
        {
            "MYONODE__RECEIVE__HOST": "127.0.0.1",
            "MYONODE__RECEIVE__PORT": str(port),
            "MYONODE__SPOOL__DIR": str(root / "spool"),
            "MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS": "1",
            "RUST_BACKTRACE": "1",
        }
    )
    env.update({f"MYONODE__{k.upper()}": str(v) for k, v in overrides.items()})
    log = root / "myonode.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [str(node_bin), "serve", "--config", str(config)],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    node = support.Node("MYONODE", port, root / "spool", config, log, proc, env)
    support.wait_for(f"myonode on port {port}", lambda: support.port_accepts(port), timeout=60, alive=node.problem)
    return node


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
def test_orthanc_stores_seg_and_sr_in_the_source_study(tmp_path: Path, node_bin: Path, data_dir: Path, orthanc: Orthanc, nodes):
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
    stored = {i["sop_instance_uid"]: i for i in orthanc.instances()}
    for uid, obj in expected.items():
        assert uid in stored, f"{obj['sop_class_uid']} {uid} not in Orthanc"
        assert stored[uid]["sop_class_uid"] == obj["sop_class_uid"]
        assert stored[uid]["study_uid"] == source.StudyInstanceUID
    support.wait_for("the outbox to drain", lambda: not support.files_under(node.spool / "outbox"), timeout=60)
    assert not support.files_under(node.spool / "failed")


def test_orthanc_outage_mid_delivery_delivers_every_object_exactly_once(
    tmp_path: Path, node_bin: Path, data_dir: Path, orthanc: Orthanc, nodes
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

    stored = orthanc.instances()
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
