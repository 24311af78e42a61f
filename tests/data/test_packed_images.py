"""data.packed_images: the layout of images in one shared buffer."""
from worldtune.data.packed_images import plan_table, stored_bytes


def test_plan_fills_the_budget_exactly_and_stops_at_the_first_image_past_it():
    sizes = [(2, 3), (4, 1), (1, 1)]  # (w, h): 18, 12 and 3 bytes
    table = plan_table(sizes, budget=30)  # the first two fill it to the byte
    assert table[:, 0].tolist() == [0, 18, -1]
    assert table[1].tolist() == [18, 1, 4, 0, 0]
    assert stored_bytes(table) == 30
    assert plan_table(sizes, budget=29)[:, 0].tolist() == [0, -1, -1]  # in index order: no skipping ahead
