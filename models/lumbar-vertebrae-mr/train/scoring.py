"""Scores shared by the training tools, NumPy only (``ceiling.py`` runs without PyTorch)."""
import numpy as np

NUM_CLASSES = 6  # background + L1..L5


def dice_per_level(pred, gt):
    """3-D Dice of labels 1..5 (L1..L5) between two label volumes of the same shape; a level absent
    from both scores 1.0. Returns a list of 5 floats."""
    d = []
    for v in range(1, NUM_CLASSES):
        a, b = pred == v, gt == v
        s = a.sum() + b.sum()
        d.append(float(2 * (a & b).sum() / s) if s else 1.0)
    return d
