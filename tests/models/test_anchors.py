"""AnchorGenerator: hand-checked cell anchors, tiling order, and parity with torchvision's."""
import numpy as np
import pytest

from minimaskrcnn.models.anchors import AnchorGenerator, generate_cell_anchors, grid_anchors


def test_cell_anchors_by_hand():
    # size 32, ratio 1: a 32x32 box centred on 0; ratio 0.5 (h/w): w = 32 * sqrt(2) = 45.25 -> half 22.6 -> 23
    cell = generate_cell_anchors((32,), (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(cell, [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    assert cell.dtype == np.float32


def test_cell_anchors_ratio_major_order():
    cell = generate_cell_anchors((16, 32), (1.0, 2.0))
    # all sizes of ratio 1 first, then all sizes of ratio 2
    np.testing.assert_array_equal(cell[:2], [[-8, -8, 8, 8], [-16, -16, 16, 16]])
    assert cell[2, 3] - cell[2, 1] > cell[2, 2] - cell[2, 0]  # ratio 2: taller than wide


def test_grid_anchors_row_major_cells_then_anchors():
    cell = generate_cell_anchors((8,), (0.5, 1.0))
    anchors = grid_anchors(cell, (2, 3), (4, 5))
    assert anchors.shape == (2 * 3 * 2, 4)
    # cell (row 1, col 2) is the 6th cell: shift x = 2 * 5, y = 1 * 4; its 2nd anchor is the square
    np.testing.assert_array_equal(anchors[5 * 2 + 1], cell[1] + [10, 4, 10, 4])


def test_generator_concatenates_levels_and_shares_images():
    gen = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    assert gen.num_anchors_per_location() == [3, 3]
    anchors = gen((64, 96), [(16, 24), (8, 12)], num_images=2)
    assert len(anchors) == 2 and anchors[0] is anchors[1]
    assert anchors[0].shape == ((16 * 24 + 8 * 12) * 3, 4)
    per_level = gen.anchors_per_level((64, 96), [(16, 24), (8, 12)])
    np.testing.assert_array_equal(np.concatenate(per_level), anchors[0])


def test_wrong_number_of_levels_raises():
    gen = AnchorGenerator(((16,), (32,)), ((1.0,),) * 2)
    with pytest.raises(ValueError, match="feature maps"):
        gen((64, 64), [(16, 16)])


@pytest.mark.reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("image_size", [(800, 1088), (128, 160), (97, 130)])
def test_parity_with_torchvision(dtype, image_size):
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    h, w = image_size
    # feature sizes of strides 4 ... 64 (ceil, as the convolutions give)
    grid_sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32, 64)]
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    features = [torch.zeros(2, 1, gh, gw, dtype=tdtype) for gh, gw in grid_sizes]
    images = ImageList(torch.zeros(2, 3, h, w, dtype=tdtype), [(h, w), (h - 10, w - 3)])
    expected = TVAnchorGenerator(sizes, ratios)(images, features)
    ours = AnchorGenerator(sizes, ratios)((h, w), grid_sizes, num_images=2, dtype=dtype)
    for e, o in zip(expected, ours):
        assert o.dtype == dtype
        np.testing.assert_array_equal(o, e.numpy())
