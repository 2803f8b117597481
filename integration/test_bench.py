"""Smoke test of the benchmark driver (integration/bench.py --quick), so it cannot rot.

The full benchmark (scripts/bench.sh) is too slow for CI; this runs every section except
inference on a few small instances with the binary under test and checks that the JSON
report is complete and self-consistent. No timing is asserted.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import support

BENCH = Path(__file__).resolve().parent / "bench.py"


def test_bench_quick_smoke(tmp_path: Path, node_bin: Path, data_dir: Path) -> None:
    support.require_tool("storescp")
    support.require_tool("storescu")
    out = tmp_path / "bench"
    p = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--bin", str(node_bin), "--data", str(data_dir),
         "--timeout", "300"],
        capture_output=True, text=True, timeout=900, env=support.dcmtk_env(),
    )
    assert p.returncode == 0, f"bench.py --quick failed\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    res = json.loads((out / "bench.json").read_text())

    # receive: every server x dataset x parallelism measured, all instances stored (checked by the driver)
    rx = res["receive"]
    servers = {r["server"] for r in rx}
    assert servers == {"myonode", "myonode-nofsync", "storescp", "storescp-sync"}
    assert {r["associations"] for r in rx} == {1, 2}
    assert len(rx) == 2 * 2 * 4
    for r in rx:
        assert r["instances_per_s"] > 0 and r["mb_per_s"] > 0
        assert r["ratio_vs_storescp"] is not None

    # latency: the stages of one series appear in flow order on the node's clock
    (lat,) = res["latency"]
    t = lat["timeline"]
    order = ["first_received", "last_received", "complete", "assembled", "segmented", "measured", "encoded", "delivered"]
    assert all(t[a] <= t[b] for a, b in zip(order, order[1:])), t
    assert lat["stages_ms"]["completion_wait"] >= 1000 * lat["quiet_period_s"]
    assert t["instances"] == 20

    # memory: peak RSS measured for both series, at least the size of the f32 volume it holds
    assert len(res["memory"]) == 2
    for m in res["memory"]:
        assert m["peak_rss_mib"] > m["f32_volume_mib"]

    # scaling: 8 series, each delivered after it was complete
    sc = res["scaling"]
    assert sc["series"] == 8 and len(sc["per_series"]) == 8
    assert len({s["series"] for s in sc["per_series"]}) == 8
    for s in sc["per_series"]:
        assert s["last_received"] <= s["complete"] <= s["delivered"]

    md = (out / "bench.md").read_text()
    assert "## Receive" in md and "## Scaling" in md
