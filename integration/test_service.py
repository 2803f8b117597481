"""End-to-end tests of the service surface (issue #7): the HTTP status API, page,
metrics and readiness of a running `myonode serve`, the status page in headless
Chromium, and SIGTERM drain.

The node is started by the `start_node` fixture (HTTP on a free port, see
support.clean_env); a real series (`series/mr-pelvis-adc`, 20 slices) is sent with
DCMTK storescu and delivered to the `pacs` fixture (DCMTK storescp).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import support

SERIES = "mr-pelvis-adc"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ------------------------------------------------------------------ helpers
def http_address(node: support.Node) -> str:
    """`host:port` of the node's HTTP server, from its log line `HTTP listening on ADDR`."""

    def probe():
        m = re.search(r"HTTP listening on (\S+)", ANSI.sub("", node.log_text()))
        return m.group(1) if m else None

    return support.wait_for("the HTTP listener in the node log", probe, timeout=60, alive=node.problem)


def get(base: str, path: str, timeout: float = 30) -> tuple[int, dict, bytes]:
    """GET http://base/path → (status, headers, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://{base}{path}", timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(base: str, path: str):
    status, _, body = get(base, path)
    assert status == 200, f"GET {path}: {status} {body[:500]!r}"
    return json.loads(body)


def send_series(node: support.Node, data_dir: Path) -> str:
    """storescu the test series to the node; returns its SeriesInstanceUID."""
    folder = data_dir / "series" / SERIES
    proc = support.storescu(node.port, node.ae_title, [folder])
    assert proc.returncode == 0, support.describe(proc)
    return str(support.read_header(support.dicom_files(folder)[0]).SeriesInstanceUID)


def wait_job_done(base: str, node: support.Node, series_uid: str, timeout: float = 240) -> dict:
    def probe():
        for j in get_json(base, "/api/jobs"):
            if j["series_instance_uid"] == series_uid and j["state"] in ("done", "failed", "delivery_failed"):
                return j
        return None

    return support.wait_for(f"job of series {series_uid} to finish", probe, timeout=timeout, alive=node.problem)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Value of the sample `name{labels}` (labels exactly as rendered, or none)."""
    pat = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    m = re.search(pat, text, re.M)
    assert m, f"no sample {name}{{{labels}}} in /metrics:\n{text[:3000]}"
    return float(m.group(1))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# -------------------------------------------------------------------- tests
def test_service_http_api_metrics_readiness(start_node, pacs: support.Pacs, data_dir: Path):
    node = start_node()
    base = http_address(node)

    status, _, body = get(base, "/healthz")
    assert (status, body) == (200, b"ok\n")

    # readiness: spool writable, every routed analysis loads, the PACS answers C-ECHO
    def ready():
        status, _, body = get(base, "/readyz")
        return json.loads(body) if status == 200 else None

    r = support.wait_for("/readyz to answer 200", ready, timeout=120, alive=node.problem)
    names = {c["name"]: c for c in r["checks"]}
    assert names["spool"]["ok"] and names["analysis:body-mask"]["ok"] and names["destination:pacs"]["ok"], r

    series_uid = send_series(node, data_dir)
    job = wait_job_done(base, node, series_uid)
    assert job["state"] == "done", job
    job_id = job["job_id"]
    assert job_id == f"{series_uid}-v1"
    assert job["modality"] == "MR" and job["analysis"]["name"]
    assert job["segments"], job
    assert job["preview"] is True
    t = job["times"]
    assert t["started"] <= t["segmented"] <= t["measured"] <= t["encoded"] <= t["delivered"], t
    assert t["series_done"], t
    deliveries = {(d["destination"], d["object"]): d for d in job["deliveries"]}
    assert set(deliveries) == {("pacs", "seg"), ("pacs", "sr")}
    assert all(d["state"] == "delivered" for d in deliveries.values()), deliveries
    # what the API says was delivered is what the PACS holds
    assert {support.read_header(p).SOPInstanceUID for p in pacs.segs()} == {deliveries[("pacs", "seg")]["sop_instance_uid"]}
    assert {support.read_header(p).SOPInstanceUID for p in pacs.srs()} == {deliveries[("pacs", "sr")]["sop_instance_uid"]}

    detail = get_json(base, f"/api/jobs/{job_id}")
    assert detail["volume"]["shape_zyx"] == [20, 256, 256]
    m = {f["label"]: f for f in detail["findings"]}
    assert m and all(f["volume_ml"] > 0 for f in m.values()), detail["findings"]

    status, headers, png = get(base, f"/api/jobs/{job_id}/preview.png")
    assert status == 200 and headers["content-type"] == "image/png"
    w, h = png_size(png)
    assert (w, h) == (256, 256), (w, h)

    for bad in ("/api/jobs/1.2.3-v1", "/api/jobs/..%2F..%2Fetc-v1", "/api/jobs/x/preview.png"):
        status, _, _ = get(base, bad)
        assert status == 404, bad

    status, headers, text = get(base, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = text.decode()
    assert metric_value(text, "myonode_instances_received_total", 'duplicate="false"') == 20
    assert metric_value(text, "myonode_received_bytes_total") > 1_000_000
    assert metric_value(text, "myonode_associations_total") >= 1
    assert metric_value(text, "myonode_series_completed_total") == 1
    assert metric_value(text, "myonode_delivered_total", 'destination="pacs"') == 2
    assert metric_value(text, "myonode_jobs", 'state="done"') == 1
    assert metric_value(text, "myonode_queue_depth", 'queue="segment"') == 0
    for stage in ("assemble", "segment", "measure", "encode"):
        assert metric_value(text, "myonode_stage_duration_seconds_count", f'stage="{stage}"') == 1
        assert metric_value(text, "myonode_stage_duration_seconds_bucket", f'stage="{stage}",le="+Inf"') == 1

    # the API reads the spool: after a restart the job is still there, unchanged
    assert support.stop(node.proc) == 0
    node2 = start_node(SPOOL__DIR=str(node.spool))
    base2 = http_address(node2)
    again = get_json(base2, f"/api/jobs/{job_id}")
    assert again["state"] == "done" and again["deliveries"] == detail["deliveries"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_service_status_page_in_chromium(node: support.Node, data_dir: Path, tmp_path: Path):
    browser = chromium()
    if not browser:
        pytest.skip("chromium not installed (scripts/setup.sh installs the Debian package `chromium`)")
    base = http_address(node)
    series_uid = send_series(node, data_dir)
    job = wait_job_done(base, node, series_uid)
    profile = tmp_path / "chromium-profile"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        "--no-proxy-server", "--virtual-time-budget=5000", "--dump-dom", f"http://{base}/",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert proc.returncode == 0 and "<table" in dom, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    row = re.search(r'<tr class="job" data-job-id="' + re.escape(job["job_id"]) + r'">(.*?)</tr>', dom, re.S)
    assert row, f"job {job['job_id']} not on the page:\n{dom[:3000]}"
    assert ">done<" in row.group(1)
    img = re.search(r"<img[^>]*>", row.group(1))
    assert img, row.group(1)
    natural = re.search(r'data-natural="(\d+)x(\d+)"', img.group(0))
    assert natural, f"preview image did not load in Chromium: {img.group(0)}"
    assert int(natural.group(1)) > 0 and int(natural.group(2)) > 0


def test_service_limits(start_node, data_dir: Path, tmp_path: Path):
    """receive.max_instances_per_series: the 6th new instance of a series is refused with
    A700H and not stored (a re-sent stored one is still accepted); receive.max_instance_bytes:
    a larger C-STORE aborts the association and stores nothing."""
    folder = data_dir / "series" / SERIES  # 20 slices of ~80 KB
    files = support.dicom_files(folder)
    node = start_node(RECEIVE__MAX_INSTANCES_PER_SERIES="5", RECEIVE__MAX_INSTANCE_BYTES="200000")
    ok = support.storescu(node.port, node.ae_title, files[:5])
    assert ok.returncode == 0, support.describe(ok)
    refused = support.storescu(node.port, node.ae_title, files[5:7], extra=["-v"])
    assert re.search(r"Refused: ?Out ?Of ?Resources", refused.stdout + refused.stderr), support.describe(refused)
    again = support.storescu(node.port, node.ae_title, files[:1])
    assert again.returncode == 0, "a duplicate of a stored instance must still be accepted"
    assert len(node.incoming_files()) == 5
    assert "series instance limit reached" in node.log_text()

    big = data_dir / "series" / "mr-knee-dess-echo1"
    big_file = support.dicom_files(big)[0]  # ~525 KB > 200,000 bytes
    proc = support.storescu(node.port, node.ae_title, [big_file])
    assert proc.returncode != 0, support.describe(proc)
    assert len(node.incoming_files()) == 5, "an oversized instance was stored"
    assert "larger than the limit" in node.log_text()
    assert node.proc.poll() is None
