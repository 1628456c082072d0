"""Category ids -> class labels: label 0 stays the background whatever ids a file uses."""
import warnings

import pytest

from minimaskrcnn.data.categories import check_category_id, make_label_map
from minimaskrcnn.errors import AnnotationError


def test_positive_ids_are_kept_as_labels_with_gaps():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = make_label_map({3: "dog", 1: "cat"})
    assert m.label_to_category_id == {1: 1, 3: 3}
    assert m.class_names == ["__background__", "cat", "N/A", "dog"] and m.num_classes == 4
    assert not m.contiguous


def test_contiguous_on_request():
    m = make_label_map({3: "dog", 1: "cat", 90: "toothbrush"}, contiguous=True)
    assert m.label_to_category_id == {1: 1, 2: 3, 3: 90}
    assert m.class_names == ["__background__", "cat", "dog", "toothbrush"]
    assert m.category_id_to_label == {1: 1, 3: 2, 90: 3}


@pytest.mark.parametrize("ids", [(0, 1, 2), (-1, 5), (-3, -2, 0)])
def test_ids_colliding_with_the_background_get_contiguous_labels_and_a_warning(ids, tmp_path):
    names = {cid: f"c{cid}" for cid in ids}
    path = tmp_path / "instances.json"
    with pytest.warns(UserWarning) as record:
        m = make_label_map(names, path=path)
    message = str(record[0].message)
    assert str(path) in message and str(min(ids)) in message and "background" in message
    assert m.contiguous and m.class_names[0] == "__background__"
    assert sorted(m.label_to_category_id) == list(range(1, len(ids) + 1))
    assert [m.label_to_category_id[label] for label in range(1, len(ids) + 1)] == sorted(ids)
    assert m.class_names[1:] == [f"c{cid}" for cid in sorted(ids)]
    assert 0 not in m.label_to_category_id  # no category is trained as background


@pytest.mark.parametrize("value, fix", [("3", "write it as the JSON number 3"), (3.0, "write it as 3"),
                                        (2.5, "number the categories with integers"), (True, "integers"),
                                        (None, "integers"), ("cat", "integers")])
def test_non_integer_ids_are_refused_with_the_fix(value, fix, tmp_path):
    with pytest.raises(AnnotationError) as err:
        check_category_id(value, tmp_path / "a.json", "categories[1]")
    message = str(err.value)
    assert "a.json" in message and "categories[1]" in message and repr(value) in message and fix in message
    with pytest.raises(AnnotationError, match="not an integer"):
        make_label_map({value: "x"} if value is not None else {None: "x"})


def test_coco_class_names_are_torchvisions():
    from minimaskrcnn.data.categories import coco_class_names

    names = coco_class_names()
    assert len(names) == 91 and names[0] == "__background__" and names[1] == "person" and names[90] == "toothbrush"
    assert names.count("N/A") == 10
    meta = pytest.importorskip("torchvision.models._meta")
    assert names == list(meta._COCO_CATEGORIES)


def test_label_map_for_the_classes_of_a_model():
    from minimaskrcnn.data.categories import coco_class_names, label_map_for_classes

    coco = coco_class_names()
    # a COCO subset keeps COCO's ids and all 91 classes (names compared without case)
    m = label_map_for_classes({1: "Person", 18: "dog "}, coco)
    assert m.label_to_category_id == {1: 1, 18: 18} and m.class_names == coco and not m.contiguous
    # other names, or COCO names under other ids: no fit
    assert label_map_for_classes({1: "person", 18: "wolf"}, coco) is None
    assert label_map_for_classes({1: "dog"}, coco) is None
    assert label_map_for_classes({1: "person"}, None) is None
    # a model trained with contiguous labels on the same categories
    m = label_map_for_classes({5: "a", 9: "b"}, ["__background__", "a", "b"])
    assert m.label_to_category_id == {1: 5, 2: 9} and m.contiguous
    # ids colliding with the background fit only contiguously
    m = label_map_for_classes({0: "a", 1: "b"}, ["__background__", "a", "b"])
    assert m.label_to_category_id == {1: 0, 2: 1}
