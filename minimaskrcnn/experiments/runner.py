"""The ablation runner: train every run of a study for several seeds, then report mean and spread.

A study (``Study``) is a list of ``Run``s and two functions, ``train`` and ``evaluate``. A run is a
*variant* (trained, evaluated, reported) or a *trunk* (only trained: variants name it as their
``parent`` and start from its weights, so that what they share is trained once per seed, or once for
every seed when the trunk is ``shared``, as the paper's models all start from one pretrained backbone). A run
``same_as`` another is the same configuration under a second name (the paper's baseline appears in
several of its tables): it is reported, never trained again.

``run_study`` trains parents before children, seed by seed, and keeps each finished (seed, run)
in ``<out_dir>/seed_<s>/<run>/`` (``result.json``, written atomically after the run), so that the
same command after an interruption skips what is done. It returns a ``StudyResults``: per variant
the seeds and the list of each metric over them; ``to_json`` / ``markdown_table`` write them with
the study's reference figures (the paper's) beside, and ``compare`` says whether a difference is
larger than the seed-to-seed spread. The studies: ``experiments.table2`` (Mask R-CNN's Table 2,
lesson 17); other studies reuse this module with their own runs and functions.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

RESULT_NAME = "result.json"  # in <out_dir>/seed_<s>/<run>/: what a finished run produced
SHARED_SEED = 0  # the seed a shared trunk is trained with


@dataclass(frozen=True)
class Run:
    """One training job of a study.

    Attributes:
        name: the run's name (a variant's name in the results).
        parent: the run whose trained weights this one starts from (trained first, once per seed).
        shared: a trunk trained once, with seed ``SHARED_SEED``, for every seed's variants (kept in
            ``<out_dir>/shared/<name>/``); the seeds then vary only what the variants train.
        report: True for a variant (evaluated and reported), False for a trunk (only trained).
        same_as: another run of the same configuration: its results are reported under this name
            too, and nothing is trained for it.
        description: one line for the tables (what the run changes).
        options: what the study needs to build and train it (the study reads them, the runner not).
    """

    name: str
    parent: str | None = None
    report: bool = True
    shared: bool = False
    same_as: str | None = None
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A difference the study measures: ``a - b`` in ``metric``, over paired seeds.

    Attributes:
        title: what is compared, e.g. "RoIAlign vs RoIPool at stride 32 (Table 2d)".
        a, b: the two variants' names.
        metric: one of the study's metrics, e.g. "mask_AP".
        reference: the same difference in the reference (the paper), in points, or None.
    """

    title: str
    a: str
    b: str
    metric: str
    reference: float | None = None


class Study(Protocol):
    """What ``run_study`` needs of a study.

    ``train(run, seed, run_dir, parent_dir)`` trains ``run`` (from the weights its parent's
    ``train`` left in ``parent_dir``; None without a parent) and leaves whatever its children and
    ``evaluate`` need in ``run_dir``. ``evaluate(run, seed, run_dir)`` returns ``{metric: value}``
    (fractions, e.g. COCO AP in [0, 1]) for every name in ``metrics``. ``setup()`` describes the
    study (data, models, schedule) for the results file; ``reference`` holds the paper's figures
    ({variant: {metric: value in points}}); ``comparisons`` the differences to judge.
    """

    name: str
    runs: Sequence[Run]
    metrics: Sequence[str]
    reference: Mapping[str, Mapping[str, float]]
    comparisons: Sequence[Comparison]

    def setup(self) -> dict: ...

    def train(self, run: Run, seed: int, run_dir: str, parent_dir: str | None) -> None: ...

    def evaluate(self, run: Run, seed: int, run_dir: str) -> dict[str, float]: ...


# ------------------------------------------------------------------------------------ order
def check_runs(runs: Sequence[Run]) -> None:
    """Raise ValueError for repeated names, unknown parents or ``same_as``, cycles, or a
    ``same_as`` that points at a trunk or at another alias."""
    by_name: dict[str, Run] = {}
    for r in runs:
        if r.name in by_name:
            raise ValueError(f"run {r.name!r} appears twice")
        by_name[r.name] = r
    for r in runs:
        if r.parent is not None and r.parent not in by_name:
            raise ValueError(f"run {r.name!r}: unknown parent {r.parent!r}")
        if r.same_as is not None:
            target = by_name.get(r.same_as)
            if target is None or not target.report or target.same_as is not None:
                raise ValueError(f"run {r.name!r}: same_as must name a variant that is trained, got {r.same_as!r}")
            if r.parent is not None:
                raise ValueError(f"run {r.name!r}: an alias (same_as) has no parent of its own")
        if r.shared and (r.report or r.parent is not None):
            raise ValueError(f"run {r.name!r}: only a trunk without a parent can be shared")
    for r in runs:  # no cycles: follow parents
        seen = {r.name}
        p = r.parent
        while p is not None:
            if p in seen:
                raise ValueError(f"run {r.name!r}: its parents form a cycle")
            seen.add(p)
            p = by_name[p].parent


def training_order(runs: Sequence[Run], only: Sequence[str] | None = None) -> list[Run]:
    """The runs to train, parents before children, in the study's order otherwise.

    Args:
        runs: the study's runs (checked with ``check_runs``).
        only: train just these runs (and the parents they need; an alias brings its target).

    Raises:
        ValueError: an unknown name in ``only``, or what ``check_runs`` raises.
    """
    check_runs(runs)
    by_name = {r.name: r for r in runs}
    wanted = set(by_name) if only is None else set(only)
    unknown = wanted - set(by_name)
    if unknown:
        raise ValueError(f"unknown runs {sorted(unknown)}: choose among {[r.name for r in runs]}")
    needed: set[str] = set()
    for name in wanted:
        r = by_name[name]
        if r.same_as is not None:
            r = by_name[r.same_as]
        while r is not None and r.name not in needed:
            needed.add(r.name)
            r = by_name[r.parent] if r.parent is not None else None
    order: list[Run] = []
    placed: set[str] = set()
    while len(placed) < len(needed):
        for r in runs:
            if r.name in needed and r.name not in placed and (r.parent is None or r.parent in placed):
                order.append(r)
                placed.add(r.name)
    return order


# ---------------------------------------------------------------------------------- results
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class StudyResults:
    """What a study measured: per variant, the seeds and each metric's value for every seed.

    Attributes:
        study: the study's name.
        command: the command line that produced the results.
        setup: the study's description (plus the runner's timing).
        variants: {name: {"seeds": [s, ...], metric: [value per seed, ...], ...}}, values as the
            study's ``evaluate`` returned them (fractions for AP).
        metrics: the metric names, in the study's order.
    """

    study: str
    command: str
    setup: dict
    variants: dict[str, dict[str, list]]
    metrics: list[str]

    def to_json(self) -> dict:
        """``{"command", "setup", "variants"}`` (the results file's format)."""
        return {"command": self.command, "setup": self.setup, "variants": self.variants}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], study: str = "", metrics: Sequence[str] | None = None) -> StudyResults:
        """Read what ``to_json`` wrote (metrics default: every list key but "seeds", in file order).

        Raises:
            ValueError: a missing key or a variant whose lists do not match its seeds.
        """
        for key in ("command", "setup", "variants"):
            if key not in data:
                raise ValueError(f"results: missing key {key!r}")
        variants = {name: dict(v) for name, v in data["variants"].items()}
        if metrics is None:
            first = next(iter(variants.values()), {})
            metrics = [k for k in first if k != "seeds"]
        for name, v in variants.items():
            if "seeds" not in v:
                raise ValueError(f"results: variant {name!r} has no seeds")
            for m in metrics:
                if len(v.get(m, ())) != len(v["seeds"]):
                    raise ValueError(f"results: variant {name!r} has {len(v.get(m, ()))} values of {m!r} "
                                     f"for {len(v['seeds'])} seeds")
        return cls(study, data["command"], dict(data["setup"]), variants, list(metrics))

    def summary(self, name: str, metric: str) -> tuple[float, float]:
        """(mean, std) of ``metric`` over the seeds of variant ``name``."""
        return mean_std(self.variants[name][metric])

    def compare(self, comparison: Comparison, scale: float = 100.0, threshold: float = 2.0) -> dict[str, Any]:
        """``a - b`` per seed (paired: the same seed shares data order, initial weights and trunk).

        Args:
            comparison: which two variants and which metric.
            scale: multiplies the values (100: AP fractions to points).
            threshold: a difference is *resolved* when its mean exceeds this many standard
                deviations of the per-seed differences (2, the lesson's rule).

        Returns:
            {"diffs" (per common seed), "mean", "std", "n", "resolved" (bool), "verdict" (a
            sentence), "reference"}.
        """
        a, b = self.variants[comparison.a], self.variants[comparison.b]
        common = [s for s in a["seeds"] if s in b["seeds"]]
        diffs = [scale * (a[comparison.metric][a["seeds"].index(s)] - b[comparison.metric][b["seeds"].index(s)])
                 for s in common]
        mean, std = mean_std(diffs)
        n = len(diffs)
        resolved = n >= 2 and abs(mean) > threshold * std
        if n < 2:
            verdict = "not resolved here (fewer than two seeds)"
        elif resolved:
            winner = comparison.a if mean > 0 else comparison.b
            verdict = (f"{winner} better: the difference is larger than {threshold:g} standard deviations of the "
                       f"seed-to-seed difference")
        else:
            verdict = f"not resolved here: within {threshold:g} standard deviations of the seed-to-seed difference"
        return {"diffs": diffs, "mean": mean, "std": std, "n": n, "resolved": resolved, "verdict": verdict,
                "reference": comparison.reference}

    def markdown_table(self, reference: Mapping[str, Mapping[str, float]] | None = None,
                       descriptions: Mapping[str, str] | None = None, scale: float = 100.0) -> str:
        """One row per variant: mean ± std over the seeds of each metric (times ``scale``), with the
        reference figures (the paper's, in points) in the last column and ``descriptions`` after the names."""
        reference = reference or {}
        descriptions = descriptions or {}
        header = ["variant", "seeds"] + [m.replace("_", " ") for m in self.metrics] + ["paper"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, v in self.variants.items():
            cells = [f"`{name}`" + (f" ({descriptions[name]})" if descriptions.get(name) else ""), str(len(v["seeds"]))]
            for m in self.metrics:
                mean, std = mean_std(v[m])
                cells.append(f"{scale * mean:.1f} ± {scale * std:.1f}")
            ref = reference.get(name, {})
            cells.append(", ".join(f"{k.replace('_', ' ')} {val:.1f}" for k, val in ref.items()) or "")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown_comparisons(self, comparisons: Sequence[Comparison], scale: float = 100.0) -> str:
        """One row per comparison: ours (mean ± std of the paired differences), the paper's, the verdict."""
        lines = ["| comparison | metric | ours: a - b (points) | paper | verdict |", "|---|---|---|---|---|"]
        for c in comparisons:
            if c.a not in self.variants or c.b not in self.variants:
                continue
            r = self.compare(c, scale)
            paper = f"{c.reference:+.1f}" if c.reference is not None else ""
            lines.append(f"| {c.title}: `{c.a}` - `{c.b}` | {c.metric.replace('_', ' ')} | "
                         f"{r['mean']:+.1f} ± {r['std']:.1f} (n={r['n']}) | {paper} | {r['verdict']} |")
        return "\n".join(lines)


def report_markdown(results: StudyResults, study: Study) -> str:
    """The markdown report of a study: the command, the table of every variant (mean ± std over the
    seeds, in points, the reference figures beside) and the verdict of every comparison."""
    descriptions = {r.name: r.description for r in study.runs}
    seconds = results.setup.get("train_seconds")
    lines = [
        f"# {results.study}: {len(next(iter(results.variants.values()), {'seeds': []})['seeds'])} seeds",
        "",
        f"Made by `{results.command}`" + (f" ({seconds / 3600:.1f} h of training and evaluation)." if seconds else "."),
        "Values: mean ± standard deviation over the seeds, in points (COCO AP x 100); `paper`: the reference's.",
        "",
        results.markdown_table(study.reference, descriptions),
        "",
        "A difference is resolved when its mean exceeds 2 standard deviations of the per-seed differences "
        "(the same seed shares initial weights, data order and trunk).",
        "",
        results.markdown_comparisons(study.comparisons),
        "",
    ]
    return "\n".join(lines)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (``io.atomic_write``: never half a file)."""
    from minimaskrcnn.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def run_dir_of(out_dir: str | os.PathLike, seed: int, run: str, shared: bool = False) -> str:
    """Where the run ``run`` of seed ``seed`` keeps its files (a shared trunk: ``<out_dir>/shared/<run>``)."""
    return os.path.join(os.fspath(out_dir), "shared" if shared else f"seed_{seed}", run)


# ---------------------------------------------------------------------------------- the loop
def run_study(study: Study, seeds: Sequence[int], out_dir: str | os.PathLike, command: str = "",
              only: Sequence[str] | None = None, log: Callable[[str], None] = print) -> StudyResults:
    """Train and evaluate every run of ``study`` for every seed (resuming what is done).

    Args:
        study: the study (see ``Study``).
        seeds: e.g. (0, 1, 2); each seed trains every run once.
        out_dir: where the runs keep their files (``seed_<s>/<run>/``).
        command: the command line, recorded in the results.
        only: run just these variants (and the trunks they need).
        log: called with one line per finished run.

    Raises:
        ValueError: a finished run on disk was made with another ``study.setup()`` (other settings).

    Returns:
        the ``StudyResults`` of the variants that were asked for (aliases included), in the
        study's order; ``setup`` holds the study's ``setup()`` plus "seeds", "train_seconds" (the
        summed time of the runs, done now or before) and "wall_seconds" (of this call).
    """
    if not seeds:
        raise ValueError("run_study: give at least one seed")
    order = training_order(study.runs, only)
    wanted = {r.name for r in study.runs} if only is None else set(only)
    start = time.perf_counter()
    train_seconds = 0.0
    measured: dict[str, dict[int, dict[str, float]]] = {}
    by_name = {r.name: r for r in study.runs}
    study_setup = json.loads(json.dumps(study.setup()))  # as it reads back from a result file
    counted: set[str] = set()  # the shared runs whose time is counted (once, not once per seed)
    for seed in seeds:
        for run in order:
            run_dir = run_dir_of(out_dir, seed, run.name, run.shared)
            result_path = os.path.join(run_dir, RESULT_NAME)
            if os.path.isfile(result_path):
                with open(result_path) as f:
                    result = json.load(f)
                if result.get("setup") != study_setup:
                    raise ValueError(f"{result_path} was made with other settings of study {study.name!r} than "
                                     "these: give another output folder, or delete it to train again")
            else:
                t = time.perf_counter()
                parent = by_name[run.parent] if run.parent is not None else None
                parent_dir = run_dir_of(out_dir, seed, parent.name, parent.shared) if parent is not None else None
                os.makedirs(run_dir, exist_ok=True)
                study.train(run, SHARED_SEED if run.shared else seed, run_dir, parent_dir)
                metrics = study.evaluate(run, seed, run_dir) if run.report else {}
                missing = [m for m in study.metrics if m not in metrics] if run.report else []
                if missing:
                    raise ValueError(f"study {study.name!r}: evaluate gave no {missing} for run {run.name!r}")
                result = {"run": run.name, "seed": SHARED_SEED if run.shared else seed,
                          "metrics": {m: float(metrics[m]) for m in metrics}, "seconds": time.perf_counter() - t,
                          "setup": study_setup}
                write_json_atomic(result_path, result)
                shown = ", ".join(f"{m} {100 * result['metrics'][m]:.1f}" for m in study.metrics
                                  if m in result["metrics"])
                log(f"[seed {seed}] {run.name}: {result['seconds']:.0f} s" + (f", {shown}" if shown else ""))
            if run.name not in counted:
                train_seconds += float(result.get("seconds", 0.0))
            if run.shared:
                counted.add(run.name)
            if run.report:
                measured.setdefault(run.name, {})[seed] = result["metrics"]
    variants: dict[str, dict[str, list]] = {}
    for run in study.runs:
        if not run.report or run.name not in wanted:
            continue
        source = measured.get(run.same_as or run.name, {})
        variants[run.name] = {"seeds": list(source)}
        for m in study.metrics:
            variants[run.name][m] = [source[s][m] for s in source]
    setup = dict(study_setup)
    setup.update({"seeds": list(seeds), "train_seconds": round(train_seconds, 1),
                  "wall_seconds": round(time.perf_counter() - start, 1)})
    return StudyResults(study.name, command, setup, variants, list(study.metrics))
