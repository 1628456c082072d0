"""checkpoint.py: one way to build a model from a configuration and to rebuild it from a checkpoint."""
import subprocess
import sys

import numpy as np
import pytest

from minimaskrcnn import io as mio
from minimaskrcnn.checkpoint import (
    CHECKPOINT_NAME,
    build_model_from_config,
    checkpoint_file,
    load_model,
    load_training_config,
)
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.errors import CheckpointError


def test_inference_does_not_import_the_training_module():
    code = ("import sys, minimaskrcnn.predict, minimaskrcnn.evaluate, minimaskrcnn.checkpoint, minimaskrcnn.cli; "
            "assert 'minimaskrcnn.train' not in sys.modules, 'inference imported minimaskrcnn.train'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_saved_model_comes_back_with_its_weights_and_class_names(tmp_path):
    config = TrainConfig(model="r18-shapes", seed=4, min_size=64, max_size=64)
    model = build_model_from_config(config, num_classes=3)
    again = build_model_from_config(config, num_classes=3)  # the same configuration, the same weights
    state = model.state_dict()
    assert all(np.array_equal(state[k], v) for k, v in again.state_dict().items())
    state = {k: v + 1 if v.dtype.kind == "f" else v for k, v in state.items()}  # as if trained
    names = ["__background__", "a", "b"]
    mio.save_checkpoint(tmp_path / CHECKPOINT_NAME, state,
                        extra={"config": config.to_dict(), "num_classes": 3, "class_names": names})
    assert checkpoint_file(tmp_path) == str(tmp_path / CHECKPOINT_NAME)
    assert checkpoint_file(tmp_path / "x.npz") == str(tmp_path / "x.npz")
    assert load_training_config(tmp_path) == config
    loaded, loaded_names = load_model(tmp_path)
    assert loaded_names == names and not loaded.training
    assert all(np.array_equal(state[k], v) for k, v in loaded.state_dict().items())


def test_checkpoints_that_are_not_training_checkpoints(tmp_path):
    path = tmp_path / "weights.npz"
    mio.save_checkpoint(path, {"w": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_model(path)
    with pytest.raises(CheckpointError, match="training configuration is unreadable"):
        load_training_config(path)
    config = TrainConfig(min_size=64, max_size=64)
    mio.save_checkpoint(path, {"w": np.ones(2, np.float32)}, extra={"config": config.to_dict(), "num_classes": 3})
    with pytest.raises(CheckpointError, match="weights do not fit model 'r18-shapes'"):
        load_model(path)
