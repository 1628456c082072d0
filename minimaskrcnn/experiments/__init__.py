"""Experiments: the ablation runner (``runner``) and the studies built on it (``table2``, lesson 17)."""
from minimaskrcnn.experiments.runner import Comparison, Run, Study, StudyResults, mean_std, run_study

__all__ = ["Comparison", "Run", "Study", "StudyResults", "mean_std", "run_study"]
