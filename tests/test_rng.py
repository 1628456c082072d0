"""rng.py: every random generator a run depends on is captured and restored exactly."""
import json
import random

import numpy as np
import pytest

from minimaskrcnn.errors import CheckpointError
from minimaskrcnn.rng import find_generators, get_rng_state, set_rng_state


def _draws(owned):
    return [random.random(), float(np.random.rand())] + [float(g.random()) if isinstance(g, np.random.Generator)
                                                         else float(g.rand()) for g in owned.values()]


def test_states_round_trip_through_json_and_replay_the_same_numbers():
    owned = {"sampler": np.random.default_rng(3), "legacy": np.random.RandomState(4)}
    _draws(owned)  # not at their seeds any more
    saved = json.loads(json.dumps(get_rng_state(owned)))  # plain values, as a checkpoint stores them
    first = _draws(owned)
    random.seed(99), np.random.seed(99), owned["sampler"].random(7), owned["legacy"].rand(7)
    set_rng_state(saved, owned)
    assert _draws(owned) == first


def test_other_generators_than_saved_name_the_checkpoint():
    saved = get_rng_state({"a": np.random.default_rng(0)})
    with pytest.raises(CheckpointError, match=r"run/checkpoint\.npz.*\['a', 'b'\]"):
        set_rng_state(saved, {"b": np.random.default_rng(0)}, source="run/checkpoint.npz")


def test_find_generators_walks_the_package_objects_only():
    from minimaskrcnn.data import DataLoader, ShapesDataset
    from minimaskrcnn.data.transforms import Compose, RandomHorizontalFlip

    flip = RandomHorizontalFlip(0.5, seed=1)
    loader = DataLoader(ShapesDataset(2), transforms=Compose([flip]))
    found = find_generators(loader, "loader")
    assert list(found) == [name for name in found if name.startswith("loader.transforms")]
    assert all(isinstance(g, np.random.Generator) for g in found.values()) and len(found) == 1
    assert find_generators({"x": [np.random.default_rng(0)]}, "d") != {}  # through dicts and lists
    assert find_generators(object()) == {}  # not a minimaskrcnn object: not walked
