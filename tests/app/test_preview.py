"""The preview shows enhancing slices first, and brain (never a blank slice) when little enhances."""

from __future__ import annotations

import numpy as np

from app.preview import preview_slices


def _brain(depth: int = 40) -> np.ndarray:
    brain = np.zeros((depth, 8, 8), dtype=bool)
    brain[10:30, 2:6, 2:6] = True  # slices 0-9 and 30-39 are blank (neck, air above the head)
    return brain


def test_enhancing_slices_first() -> None:
    mask = np.zeros((40, 8, 8), dtype=bool)
    mask[12, 3, 3] = mask[25, 3:5, 3:5] = mask[18, 3, 3:6] = True
    assert preview_slices(mask, 3, _brain()) == [12, 18, 25]


def test_little_enhancement_is_completed_with_brain_slices() -> None:
    mask = np.zeros((40, 8, 8), dtype=bool)
    mask[15, 4, 4] = True  # one voxel: one slice enhances
    chosen = preview_slices(mask, 3, _brain())
    assert 15 in chosen and len(chosen) == 3
    assert all(10 <= k < 30 for k in chosen)  # no blank slice
    assert min(abs(a - b) for a in chosen for b in chosen if a != b) >= 2


def test_nothing_enhances() -> None:
    chosen = preview_slices(np.zeros((40, 8, 8), dtype=bool), 3, _brain())
    assert len(chosen) == 3 and all(10 <= k < 30 for k in chosen)
