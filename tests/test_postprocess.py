"""crocnet.postprocess: largest-component island removal, checked on hand-built label maps and against a
brute-force flood fill."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from crocnet.postprocess import POSTPROCESS_MODES, keep_largest_component, postprocess_labels


def _flood_fill_largest(mask: np.ndarray) -> np.ndarray:
    """Largest face-connected component by breadth-first search (first found wins ties, in C order)."""
    seen = np.zeros_like(mask)
    best: list = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, comp = deque([start]), []
        while queue:
            p = queue.popleft()
            comp.append(p)
            for axis in range(mask.ndim):
                for step in (-1, 1):
                    q = list(p)
                    q[axis] += step
                    q = tuple(q)
                    if 0 <= q[axis] < mask.shape[axis] and mask[q] and not seen[q]:
                        seen[q] = True
                        queue.append(q)
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask)
    for p in best:
        out[p] = True
    return out


@pytest.mark.parametrize("shape", [(17, 19), (9, 11, 5), (12, 13, 1)])
def test_largest_component_matches_a_flood_fill(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        mask = rng.random(shape) < 0.45
        np.testing.assert_array_equal(keep_largest_component(mask), _flood_fill_largest(mask))


def test_diagonal_neighbours_are_not_connected():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    mask[0, 3:5] = True
    kept = keep_largest_component(mask)
    assert kept.sum() == 2 and kept[0, 3] and kept[0, 4]


def test_empty_and_single_component_masks_come_back_unchanged():
    empty = np.zeros((4, 4, 2), bool)
    assert not keep_largest_component(empty).any()
    one = np.zeros((6, 6), bool)
    one[1:4, 2:5] = True
    np.testing.assert_array_equal(keep_largest_component(one), one)


def _heart_with_islands() -> np.ndarray:
    """LV disc ringed by myocardium, RV beside it; an LV island far away, a second RV piece touching the
    myocardium, and a stray MYO pixel in a corner."""
    labels = np.zeros((40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 15)
    labels[r < 9] = 2
    labels[r < 6] = 1
    labels[(np.abs(yy - 20) < 6) & (xx >= 24) & (xx < 32)] = 3
    labels[2:4, 35:38] = 1  # LV island, far from the heart
    labels[30:32, 12:14] = 3
    labels[29, 12:14] = 3
    labels[38, 1] = 2  # stray myocardium pixel
    return labels


def test_modes_on_a_heart_with_islands():
    labels = _heart_with_islands()
    assert (labels[29:32, 12:14] == 3).all()
    heart = postprocess_labels(labels, "heart")
    assert heart[2, 35] == 0 and heart[38, 1] == 0  # islands away from the heart go
    assert (heart[29:32, 12:14] == 3).all()  # an RV piece touching the heart stays
    structures = postprocess_labels(labels, "structures")
    assert structures[2, 35] == 0 and structures[38, 1] == 0
    assert (structures[29:32, 12:14] == 0).all()  # not part of the largest RV component
    both = postprocess_labels(labels, "both")
    np.testing.assert_array_equal(both, structures)
    # nothing is relabelled to another structure, and the main structures are untouched
    for out in (heart, structures, both):
        changed = out != labels
        assert (out[changed] == 0).all()
        for value in (1, 2, 3):
            assert (out == value).sum() >= keep_largest_component(labels == value).sum()
    np.testing.assert_array_equal(postprocess_labels(labels, "none"), labels)


def test_short_axis_stack_is_connected_through_slices():
    stack = np.zeros((10, 10, 3), np.uint8)
    stack[2:6, 2:6, 0] = 1
    stack[3:5, 3:5, 1] = 1  # overlaps slice 0: same 3D component
    stack[7:9, 7:9, 2] = 1  # no overlap with slice 1: an island in 3D
    out = postprocess_labels(stack, "structures")
    assert out[:, :, 0].sum() == 16 and out[:, :, 1].sum() == 4 and out[:, :, 2].sum() == 0


def test_input_is_not_modified_and_dtype_kept():
    labels = _heart_with_islands()
    before = labels.copy()
    out = postprocess_labels(labels, "both")
    np.testing.assert_array_equal(labels, before)
    assert out.dtype == labels.dtype and out.shape == labels.shape


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="one of"):
        postprocess_labels(np.zeros((3, 3), np.uint8), "largest")
    with pytest.raises(TypeError, match="integer label map, got dtype float32"):
        postprocess_labels(np.zeros((3, 3), np.float32), "both")
    with pytest.raises(TypeError, match="boolean mask, got dtype uint8"):
        keep_largest_component(np.zeros((3, 3), np.uint8))
    assert POSTPROCESS_MODES[0] == "none"


@pytest.mark.parametrize("structures, got", [
    ("123", "got str '123'"),  # iterated as characters: no label equals '1', so nothing was removed
    (1, "got int 1"),
    ((1, 2.0), "got (1, 2.0) (not ints: 2.0)"),
    ([True, 2], "got [True, 2] (not ints: True)"),
    (np.array([1.0, 2.0]), "got an array of shape (2,) and dtype float64"),
    ((), "got an empty tuple"),
    ((0, 1, 2, 3), "got (0, 1, 2, 3) (0 is the background, not a structure)"),  # "heart" would keep every island
])
def test_structures_must_be_a_sequence_of_ints(structures, got):
    labels = _heart_with_islands()
    with pytest.raises((TypeError, ValueError)) as info:
        postprocess_labels(labels, "both", structures=structures)
    assert str(info.value) == ("postprocess_labels: expected structures as a non-empty sequence of ints "
                               f"(label values, e.g. (1, 2, 3)), {got}")
    expected = postprocess_labels(labels, "both")
    for same in ([1, 2, 3], range(1, 4), np.array([1, 2, 3]), (np.uint8(1), np.int64(2), 3)):
        np.testing.assert_array_equal(postprocess_labels(labels, "both", structures=same), expected)
