"""End to end through the shipped learned model `models/lumbar-vertebrae-mr`.

The held-out test volumes of the model (listed in models/lumbar-vertebrae-mr/metrics.json)
are wrapped into DICOM series — REAL PIXELS, GENERATED HEADERS: the training data
(`training/lumbar-vertebrae-mr/NN.mat`) carries no DICOM header, so patient/study/series
attributes are synthetic, the orientation is the data README's (sagittal slices
`I[:, :, k]`, rows head → foot, columns anterior → posterior), the spacing 1 mm isotropic,
and the files are sent in shuffled order. The node (analysis = lumbar-vertebrae-mr) receives
them from `storescu`, runs the ONNX model through ONNX Runtime, and delivers the SEG to
`storescp`; the SEG is decoded with highdicom and compared per vertebra with the manual
labels. The mean Dice must stay within 0.02 of the model card's test figure, so a broken
pre- or post-processing step in the node (axis order, resampling, normalisation, argmax,
frame placement) fails this test. Each volume is sent a second time with the field of view
moved 32 mm head-foot (pixels and labels moved, uncovered rows without signal): the node must
reproduce the card's figures for those too (`calibration.json` "fov_shift_mm"), which record
that the shipped model shifts levels when the field of view moves towards the head.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import scipy.io

import support
from lumbar_series import write_series

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "lumbar-vertebrae-mr"
# the card's field-of-view shift (NumPy only), so the node is fed exactly what calibrate.py scored
sys.path.append(str(MODEL_DIR / "train"))
from robustness import shift_rows  # noqa: E402
LEVELS = ["L1", "L2", "L3", "L4", "L5"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def test_lumbar_model_through_the_node_matches_its_card(start_node, pacs, data_dir: Path, tmp_path: Path):
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    # the card's figure: the test split scored with the shipped decision weights
    # (train/calibrate.py chose them on the validation split; model.toml [output] class_weights)
    calibration = json.loads((MODEL_DIR / "calibration.json").read_text())
    card = calibration["calibrated"]
    card_mean = card["test_mean_dice"]
    test_files = metrics["test"]
    assert calibration["test"] == test_files
    assert len(test_files) == 5
    # the node must post-process as the card's figures were made: the decision weights chosen by
    # calibrate.py, and the level order (calibrate.py --order-relabel = the node's
    # [output.level_order], same parameters) exactly when the figures used it
    manifest = tomllib.loads((MODEL_DIR / "model.toml").read_text())
    weights = manifest["output"].get("class_weights")
    assert weights == [calibration["background_weight"]] + [1.0] * 5, weights
    if calibration.get("order_relabel", False):
        want = {k: v for k, v in calibration["level_order"].items() if v is not None}
        got = manifest["output"].get("level_order")
        assert got == want, f"model.toml [output.level_order] {got} vs calibration.json {want}"
    else:
        assert "level_order" not in manifest["output"]
    # and the largest component per level exactly when calibrate.py kept only that
    # (calibrate.py --keep-all-pieces records "largest_component": false)
    largest = calibration.get("largest_component", True)
    got_largest = [lab.get("largest_component", False) for lab in manifest["labels"]]
    assert got_largest == [largest] * 5, f"model.toml largest_component {got_largest} vs calibration.json {largest}"
    lib = REPO / ".onnxruntime" / "lib" / "libonnxruntime.so.1.31.1"
    assert lib.is_file(), f"{lib} missing: run scripts/fetch-onnxruntime.sh"
    # No analysis override: the default config's [[routes]] send MR with BodyPartExamined
    # LSPINE to lumbar-vertebrae-mr (segment.analysis stays body-mask).
    # Only the water image is sent (as a site without fat/in/opposed-phase export would):
    # assemble.dixon_channels = ["water"] lets each job go on at once instead of waiting
    # study_window_seconds (30 s) for partners that never come.
    node = start_node(ASSEMBLE__QUIET_PERIOD_SECONDS="2", ASSEMBLE__DIXON_CHANNELS="water")
    # Each test volume once as it is, then once with the field of view moved 32 mm head-foot
    # (alternately up and down; the uncovered rows hold no signal, as train/robustness.py does):
    # the card scores these too (calibration.json "fov_shift_mm"), and a model that labels a
    # level by its place in the image shifts levels there (1.1.0 did).
    shifted = calibration.get("fov_shift_mm", {})
    cases = [(name, 0) for name in test_files]
    if shifted:
        cases += [(name, -32 if i % 2 == 0 else 32) for i, name in enumerate(test_files)]
    results, results_shifted = {}, {}
    for i, (name, shift) in enumerate(cases):
        m = scipy.io.loadmat(data_dir / "training" / "lumbar-vertebrae-mr" / name)
        img, gt = m["I"], m["GT"].astype(np.int64)
        if shift:
            img, gt = shift_rows(img, shift, img.min()), shift_rows(gt, shift, 0)
        folder = tmp_path / f"series-{i}"
        uids = write_series(img, folder, seed=i)
        sent = support.storescu(node.port, node.ae_title, [folder], "SCANNER")
        assert sent.returncode == 0, support.describe(sent)
        segs = support.wait_for(f"SEG {i + 1} at the PACS", lambda: len(pacs.segs()) > i and pacs.segs(), alive=node.problem)
        seg_path = [p for p in segs if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID
                    == pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID]
        assert len(seg_path) == 1
        seg = hd.seg.segread(seg_path[0])
        labels = [s.SegmentLabel for s in seg.SegmentSequence]
        assert labels == [f"{l} vertebral body" for l in LEVELS], f"routed to the wrong analysis? {labels}"
        pred = np.zeros(gt.shape, np.int64)
        for k, sop in uids.items():
            try:
                px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[sop], combine_segments=True,
                                                       skip_overlap_checks=True)
            except (KeyError, ValueError):
                continue  # no frame references this slice: empty in every segment
            pred[:, :, k] = px[0]
        d = [dice(pred == v, gt == v) for v in range(1, 6)]
        (results_shifted.setdefault(shift, {}) if shift else results)[name] = d
        print(f"{name} (field of view moved {shift} mm): Dice " + " ".join(f"{l} {x:.3f}" for l, x in zip(LEVELS, d)))
    log = node.log_text()
    assert log.count("Dixon series without partners on its grid: lone job") == len(cases), log[-3000:]
    for shift, per_volume in results_shifted.items():
        for name, d in per_volume.items():
            want = shifted[str(shift)]["test_results"][name]["mean"]
            assert abs(float(np.mean(d)) - want) <= 0.01, f"{name} moved {shift} mm: node {np.mean(d):.4f} vs card {want:.4f}"
    mean = float(np.mean([np.mean(v) for v in results.values()]))
    print(f"mean Dice through the node {mean:.4f}; model card {card_mean:.4f}")
    # The issue asks for 0.02; the node reproduces the card to about 1e-4, and the decision weights
    # alone move the mean by 0.013, so hold it to 0.005 (and each volume to 0.01) to catch a node
    # that ignores them or breaks pre-/post-processing.
    assert abs(mean - card_mean) <= 0.005, f"node mean Dice {mean:.4f} vs card {card_mean:.4f}"
    for name, d in results.items():
        want = card["test_results"][name]["mean"]
        assert abs(float(np.mean(d)) - want) <= 0.01, f"{name}: node {np.mean(d):.4f} vs card {want:.4f}"
