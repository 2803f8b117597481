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
