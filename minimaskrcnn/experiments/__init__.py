"""Experiments: the ablation runner (``runner``) and the studies built on it (``table2``, lesson 17);
``deepmac`` (lesson 18) runs its 2x2 study itself: ``python -m minimaskrcnn.experiments.deepmac``.

``STUDIES`` names the studies ``minimaskrcnn ablate`` can run: each maps to a factory
``make_study(quick, overrides, data_dir, log) -> Study`` (see ``table2.make_study``).
"""
from minimaskrcnn.experiments import table2
from minimaskrcnn.experiments.runner import (
    Comparison,
    Run,
    Study,
    StudyResults,
    mean_std,
    run_study,
    training_order,
    write_json_atomic,
)

STUDIES = {"table2": table2.make_study}

__all__ = ["STUDIES", "Comparison", "Run", "Study", "StudyResults", "mean_std", "run_study", "training_order",
           "write_json_atomic"]
