import numpy as np
import pytest

from retinaedge.runtime.detections import Detections
from retinaedge.runtime.draw import class_color, contact_sheet, draw_detections
from retinaedge.runtime.errors import InputError


def dets(boxes, scores, classes):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64))


def test_box_outline_in_class_colour_interior_untouched():
    img = np.zeros((60, 80, 3), np.uint8)
    d = dets([[20, 30, 50, 55]], [0.9], [1])
    out = draw_detections(img, d, ("a", "b"), line_width=2, show_labels=False)
    color = class_color(1)
    # outline pixels: left edge x=20..21, bottom edge y=54..55
    assert tuple(out[40, 20]) == color and tuple(out[40, 21]) == color
    assert tuple(out[54, 35]) == color
    assert (out[35:50, 25:45] == 0).all()  # interior untouched
    assert (img == 0).all()  # input not modified
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_label_is_drawn_above_the_box_and_min_score_filters():
    img = np.zeros((60, 80, 3), np.uint8)
    d = dets([[20, 30, 50, 55], [2, 2, 10, 10]], [0.9, 0.1], [0, 1])
    out = draw_detections(img, d, ("a", "b"), min_score=0.5)
    assert (out[18:30, 20:50] != 0).any()  # tag above the confident box
    assert (out[0:12, 0:12] == 0).all()  # the 0.1 box is not drawn


def test_boxes_outside_the_image_are_clipped_not_crashing():
    img = np.zeros((20, 20, 3), np.uint8)
    out = draw_detections(img, dets([[-10, -5, 40, 30]], [0.5], [0]), ("a",))
    assert out.shape == (20, 20, 3)
    assert tuple(out[10, 0]) == class_color(0)


def test_empty_detections_return_a_copy():
    img = np.full((8, 8, 3), 7, np.uint8)
    out = draw_detections(img, Detections.empty(), ("a",))
    assert (out == img).all() and out is not img


def test_rejects_non_rgb():
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        draw_detections(np.zeros((8, 8), np.uint8), Detections.empty(), ("a",))


def test_class_colours_differ():
    assert len({class_color(i) for i in range(10)}) == 10


def test_contact_sheet_layout():
    a = np.full((10, 20, 3), 255, np.uint8)  # wide: fitted to 32x16, centred vertically
    b = np.full((40, 40, 3), 128, np.uint8)
    sheet = contact_sheet([a, b, a], columns=2, tile=32)
    assert sheet.shape == (64, 64, 3)
    assert tuple(sheet[16, 16]) == (255, 255, 255)
    assert tuple(sheet[2, 16]) == (32, 32, 32)  # background above the wide image
    assert tuple(sheet[16, 48]) == (128, 128, 128)
    assert tuple(sheet[48, 48]) == (32, 32, 32)  # empty last cell


def test_contact_sheet_errors():
    with pytest.raises(InputError, match="0 images"):
        contact_sheet([])
    with pytest.raises(InputError, match="1 titles for 2 images"):
        contact_sheet([np.zeros((4, 4, 3), np.uint8)] * 2, titles=["x"])
