"""polygons_from_segmentation and merge_polygon_parts: COCO segmentations to one polygon per instance."""
import numpy as np

from worldtune.data.polygons import _closest_pair, merge_polygon_parts, polygons_from_segmentation


def test_multi_part_polygons_are_merged_at_their_closest_vertices():
    left = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], np.float32)
    middle = np.array([[12, 1], [10, 1], [10, 0], [12, 0]], np.float32)  # entry (10, 0) after exit (12, 1)
    right = np.array([[20, 3], [22, 3], [22, 5], [20, 5]], np.float32)
    (merged,) = merge_polygon_parts([left, middle, right])
    expected = np.array([
        [2, 0], [2, 2], [0, 2], [0, 0], [2, 0],  # left, whole loop from its exit vertex (2, 0)
        # middle, entry index 2 > exit index 0: the official loader reverses the part without
        # remapping the indices, so it starts at reversed[0] = (12, 0) and walks 2 steps
        [12, 0], [10, 0], [10, 1],
        [20, 3], [22, 3], [22, 5], [20, 5], [20, 3],  # right, whole loop from its entry vertex
        [10, 1], [12, 1], [12, 0],  # back through the rest of the (reversed) middle part
    ], np.float32)
    np.testing.assert_array_equal(merged, expected)
    # entry before exit: the stretch runs from the entry to the exit vertex in vertex order
    forward = middle[[2, 3, 0, 1]]  # now entry (10, 0) has index 0 and exit (12, 1) index 2
    (merged,) = merge_polygon_parts([left, forward, right])
    np.testing.assert_array_equal(merged[5:8], [[10, 0], [12, 0], [12, 1]])
    np.testing.assert_array_equal(merged[13:], [[12, 1], [10, 1], [10, 0]])
    # every vertex survives, so the tight box (the official mask2bbox) is unchanged
    assert {tuple(v) for v in merged} == {tuple(v) for p in (left, middle, right) for v in p}
    single = [left]
    assert merge_polygon_parts(single) is single and merge_polygon_parts([]) == []


def test_closest_vertices_are_found_in_blocks_as_one_full_argmin_would():
    rng = np.random.default_rng(0)
    for _ in range(20):
        # integer coordinates on a small grid: many tied distances, where the first pair must win
        a = rng.integers(0, 6, (int(rng.integers(1, 40)), 2)).astype(np.float32)
        b = rng.integers(0, 6, (int(rng.integers(1, 40)), 2)).astype(np.float32)
        full = ((a[:, None].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1)
        expected = np.unravel_index(int(np.argmin(full)), full.shape)
        for max_values in (1, 7, len(b), 10**6):
            assert _closest_pair(a, b, max_values) == tuple(int(v) for v in expected)


def test_merged_parts_are_walked_back_in_reverse_order():
    # Official merge_multi_segment: the first round runs 0 -> 1 (partial) -> 2 (partial) -> 3, the second
    # comes back from the last middle part to the first (3 -> 2 (rest) -> 1 (rest)), so the path is one
    # closed walk 0, 1, 2, 3, 2, 1. Four unit squares 10 px apart: a vertex's part is x // 10, and each
    # entry index (0) precedes its exit index (1), so the index quirk does not apply.
    parts = [np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32) + [10 * i, 0] for i in range(4)]
    (merged,) = merge_polygon_parts(parts)
    owners = (merged[:, 0] // 10).astype(int).tolist()
    runs = [o for i, o in enumerate(owners) if i == 0 or o != owners[i - 1]]
    assert runs == [0, 1, 2, 3, 2, 1]
    assert len(merged) == 5 + 2 + 2 + 5 + 4 + 4  # end loops closed, middles: stretch + the rest


def test_polygon_parts_with_fewer_than_three_points_are_dropped():
    # The official rule: a part needs an even number of values and at least 3 points (6 values).
    segm = [[0, 0, 10, 0, 10, 10], [0, 0, 5, 5], [1, 2, 3, 4, 5]]
    parts = polygons_from_segmentation(segm, 20, 20)
    assert len(parts) == 1
    np.testing.assert_array_equal(parts[0], [[0, 0], [10, 0], [10, 10]])


def test_rle_masks_are_traced_to_their_outer_outlines():
    """Compressed and uncompressed RLE give the same outlines: one per region (a hole adds none), and a
    region of one or two pixels, too small for a polygon, none."""
    from pycocotools import mask as mask_utils

    from tests.helpers.coco_factory import _uncompressed_rle

    mask = np.zeros((20, 30), np.uint8)
    mask[2:12, 3:15] = 1
    mask[5:8, 6:9] = 0  # a hole
    mask[15, 20:22] = 1  # two pixels
    mask[18, 27] = 1  # one pixel
    compressed = mask_utils.encode(np.asfortranarray(mask))
    for segm in (compressed, _uncompressed_rle(mask)):
        (outline,) = polygons_from_segmentation(segm, 20, 30)
        assert outline.dtype == np.float32
        assert {tuple(v) for v in outline.tolist()} == {(3, 2), (14, 2), (14, 11), (3, 11)}


def test_a_polygon_part_with_a_value_that_is_no_number_is_dropped():
    segm = [[0, 0, 10, 0, 10, 10], [0, 0, {"x": 1}, 0, 10, 10], [0, 0, [1, 2], 0, 10, 10], [0, 0, "abc", 0, 1, 1]]
    (part,) = polygons_from_segmentation(segm, 20, 20)
    np.testing.assert_array_equal(part, [[0, 0], [10, 0], [10, 10]])
