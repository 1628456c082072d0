"""A training run for the data-parallel tests, to start under mpiexec (or alone).

    python tests/_mpi_train.py CONFIG_JSON [--dtype float64] [--num-classes L] [--until STEP] [--resume]

CONFIG_JSON is a ``TrainConfig.to_dict()``; ``--dtype float64`` trains a float64 model (the exact
variant of the tests; ``--num-classes`` for data other than the shapes), ``--until`` stops after that
step (a checkpoint is written there), ``--resume`` continues the run from its checkpoint. A failing
rank ends the job (``distributed.abort_on_error``).
"""
import argparse
import json

import numpy as np

from minimaskrcnn import distributed
from minimaskrcnn.checkpoint import build_model_from_config
from minimaskrcnn.config import TrainConfig
from minimaskrcnn.data.shapes import SHAPE_CLASSES
from minimaskrcnn.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-classes", type=int, default=len(SHAPE_CLASSES) + 1)
    parser.add_argument("--until", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    with open(args.config) as f:
        config = TrainConfig.from_dict(json.load(f))
    comm = distributed.init()
    with distributed.abort_on_error(comm):
        model = None
        if args.dtype != "float32":
            model = build_model_from_config(config, args.num_classes).to_dtype(np.dtype(args.dtype).type)
        trainer = Trainer(config, resume=args.resume, model=model)
        out = trainer.fit(until_step=args.until)
        if comm.is_root:
            print(json.dumps({"step": out["step"], "ranks": comm.size, "loss": out["losses"].get("loss")}))


if __name__ == "__main__":
    main()
