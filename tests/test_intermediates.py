"""record_intermediates: what a block records, that records are host copies, nesting, threads, and that
nothing is recorded (or copied) outside a block. The model's keys are tested in tests/models/test_mask_rcnn.py."""
import threading

import numpy as np

from minimaskrcnn import Tensor, record_intermediates
from minimaskrcnn.intermediates import Intermediates, is_recording, record


def test_nothing_outside_a_block():
    assert not is_recording()
    record("x", np.ones(3))  # no recorder: no effect, no error
    with record_intermediates() as rec:
        assert is_recording() and isinstance(rec, Intermediates) and isinstance(rec, dict) and rec == {}
    record("late", np.ones(3))
    assert rec == {} and not is_recording()


def test_records_are_host_copies_of_arrays_and_tensors():
    a = np.arange(4.0)
    t = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    nested = {"boxes": [a, a[:2]], "levels": (1, 2)}
    with record_intermediates() as rec:
        record("a", a)
        record("t", t)
        record("nested", nested)
        record("sizes", [(128, 96)])
    a[0] = 100.0  # changed after recording: the record keeps what was recorded
    assert rec["a"][0] == 0.0 and rec["nested"]["boxes"][0][0] == 0.0
    assert type(rec["t"]) is np.ndarray and rec["t"].dtype == np.float32 and rec["t"].shape == (2, 2)
    assert rec["nested"]["levels"] == (1, 2) and rec["sizes"] == [(128, 96)]
    assert "nested: {boxes: [(4,) float64, (2,) float64], levels: (1, 2)}" in repr(rec)


def test_blocks_nest_and_the_last_record_of_a_key_wins():
    with record_intermediates() as outer:
        record("x", np.zeros(1))
        with record_intermediates() as inner:
            record("x", np.ones(1))
            record("y", np.ones(2))
        record("z", np.ones(3))
    assert set(outer) == {"x", "y", "z"} and outer["x"][0] == 1.0
    assert set(inner) == {"x", "y"}


def test_recording_is_per_thread():
    seen = {}

    def other():
        seen["recording"] = is_recording()
        record("from_thread", np.ones(1))

    with record_intermediates() as rec:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == {"recording": False} and "from_thread" not in rec
