"""Results over several seeds: their spread, and whether two configurations really differ.

A single run's metrics move with the seed (issue 15: 0.002-0.006 on Beauty between id sets), so a
difference between two configurations means something only next to that spread. Two tests answer
different questions, and a comparison reports both:

- across seeds: a paired t-test over the per-seed metric values (seed s of A against seed s of B).
  It asks whether the difference survives retraining, the question a results table makes. Pairing by
  seed cancels what the two configurations share under one seed (e.g. the same semantic ids when
  only the generator differs). It needs at least 2 seeds; with few it has little power.
- across users: per user, the metric averaged over each run's seeds, then a paired t-test and a
  Wilcoxon test over users. Averaging first keeps one value per user (treating seeds x users as
  independent would overstate the evidence); the test still holds the trained models fixed, so it
  cannot see seed-to-seed variation and is never enough on its own.

Everything here works on `EvalResult`s, whichever run folder they came from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cemg.evaluation.metrics import per_user_metrics
from cemg.evaluation.protocol import EvalResult

# Per seed, part ("valid", "test") -> its result.
SeedResults = dict[int, dict[str, EvalResult]]
# In an EvalResult's `extra`: it holds the metrics only, not the per-user ranks (a result recovered
# from a summary table); such a seed counts across seeds, not across users.
NO_PER_USER = "metrics_only"

SUBSETS = ("all", "cold_start")
ALPHA = 0.05
# Below this many paired seeds a t-test rarely detects a difference of the size seeds themselves
# cause; a comparison says so rather than letting "no significant difference" read as "equal".
FEW_SEEDS = 5


def _values(result: EvalResult, subset: str) -> dict[str, float]:
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    return result.metrics if subset == "all" else result.cold_start


def _std(values: list[float]) -> float | None:
    # Sample standard deviation (n - 1): the seeds are a sample of all the seeds one could draw.
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def spread(per_seed: SeedResults) -> dict:
    """Mean, sample standard deviation and per-seed value of every metric, for every part and for all
    users and the cold-start subset: {part: {"all"|"cold_start": {metric: {mean, std, per_seed}}}}.
    `std` is None with one seed."""
    if not per_seed:
        raise ValueError("no seeds to summarise")
    seeds = sorted(per_seed)
    parts = list(per_seed[seeds[0]])
    out: dict = {}
    for part in parts:
        missing = [s for s in seeds if part not in per_seed[s]]
        if missing:
            raise ValueError(f"seeds {missing} have no {part!r} results")
        first = per_seed[seeds[0]][part]
        entry: dict = {"n_users": first.n_users, "n_cold_start_users": first.n_cold}
        for subset in SUBSETS:
            metrics = {}
            for name in _values(first, subset):
                values = [_values(per_seed[s][part], subset)[name] for s in seeds]
                metrics[name] = {"mean": float(np.mean(values)), "std": _std(values),
                                 "per_seed": {str(s): v for s, v in zip(seeds, values)}}
            entry[subset] = metrics
        out[part] = entry
    return out


def _per_user(result: EvalResult, metric: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, per-user metric) of one result, restricted to the subset."""
    k = int(metric.split("@")[1])
    values = per_user_metrics(result.ranks, [k])[metric]
    users = np.asarray(result.users)
    if subset == "cold_start":
        if result.cold is None:
            raise ValueError("these results keep no per-user cold-start flags (saved by an older version); "
                             "re-run their evaluation stage to test the cold-start subset across users")
        users, values = users[result.cold], values[result.cold]
    return users, values


def _mean_over_seeds(per_seed: SeedResults, part: str, metric: str, subset: str) -> dict[int, float]:
    """User -> the metric averaged over the seeds that scored the user."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for results in per_seed.values():
        users, values = _per_user(results[part], metric, subset)
        for u, v in zip(users.tolist(), values.tolist()):
            sums[u] = sums.get(u, 0.0) + v
            counts[u] = counts.get(u, 0) + 1
    return {u: sums[u] / counts[u] for u in sums}


def _pvalue(test) -> float:
    # scipy returns nan when every difference is zero: no evidence of any difference.
    p = float(test.pvalue)
    return 1.0 if math.isnan(p) else p


@dataclass
class Comparison:
    """Configuration A against B on one metric, over seeds and over users."""

    part: str
    subset: str
    metric: str
    per_seed_a: dict[int, float]
    per_seed_b: dict[int, float]
    mean_a: float
    mean_b: float
    std_a: float | None
    std_b: float | None
    difference: float  # mean_a - mean_b
    seed_test: dict | None  # {"kind", "n_seeds", "pvalue"}; None when there are too few seeds
    user_test: dict | None  # {"n_users", "t_pvalue", "wilcoxon_pvalue"}; None when it cannot be run
    significant: bool  # across seeds when that test exists, else across users
    verdict: str  # one sentence in plain words
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if not self.significant:
            return "within noise"
        return "A better" if self.difference > 0 else "B better"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["per_seed_a"] = {str(s): v for s, v in self.per_seed_a.items()}
        out["per_seed_b"] = {str(s): v for s, v in self.per_seed_b.items()}
        out["label"] = self.label
        return out


def _seed_test(a: dict[int, float], b: dict[int, float]) -> tuple[dict | None, list[str]]:
    from scipy import stats

    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        x, y = [a[s] for s in common], [b[s] for s in common]
        test = {"kind": "paired t-test over seeds", "n_seeds": len(common),
                "pvalue": _pvalue(stats.ttest_rel(x, y)) if np.any(np.subtract(x, y)) else 1.0}
        notes = []
        if len(common) < len(a) or len(common) < len(b):
            notes.append(f"only the {len(common)} seeds both runs have are paired")
        return test, notes
    if len(a) >= 2 and len(b) >= 2:
        x, y = list(a.values()), list(b.values())
        test = {"kind": "Welch t-test over seeds (unpaired: the runs share fewer than 2 seeds)",
                "n_seeds": min(len(a), len(b)),
                "pvalue": _pvalue(stats.ttest_ind(x, y, equal_var=False))}
        return test, []
    return None, [f"no test across seeds: it needs at least 2 seeds in each run (A has {len(a)}, B {len(b)}); "
                  "run each configuration with `cemg run --seeds`"]


def _user_test(a: SeedResults, b: SeedResults, part: str, metric: str, subset: str) -> tuple[dict | None, list[str]]:
    from scipy import stats

    notes = []
    bare = {name: sorted(s for s, results in runs.items() if results[part].extra.get(NO_PER_USER))
            for name, runs in (("A", a), ("B", b))}
    if bare["A"] or bare["B"]:
        # Seeds recovered from a summary table keep no per-user ranks: test across users on the seeds
        # both runs have with ranks, so each side is averaged over the same seeds.
        common = sorted(s for s in set(a) & set(b) if s not in bare["A"] and s not in bare["B"])
        kept_only = "; ".join(f"seeds {seeds} of {name}" for name, seeds in bare.items() if seeds)
        if not common:
            return None, [f"no test across users: {kept_only} keep their metrics only, not per-user ranks "
                          "(measured before those were kept), and no other seed is common to both runs"]
        a, b = {s: a[s] for s in common}, {s: b[s] for s in common}
        notes.append(f"the test across users uses seeds {common} only: {kept_only} keep their metrics only")
    try:
        per_a = _mean_over_seeds(a, part, metric, subset)
        per_b = _mean_over_seeds(b, part, metric, subset)
    except ValueError as err:
        return None, [f"no test across users: {err}"]
    users = sorted(set(per_a) & set(per_b))
    if len(users) < 2:
        return None, [f"no test across users: the runs share {len(users)} {part} users (different datasets?)"]
    x = np.array([per_a[u] for u in users])
    y = np.array([per_b[u] for u in users])
    if len(users) < max(len(per_a), len(per_b)):
        notes.append(f"the runs share {len(users)} of their {part} users; only those are paired")
    differ = bool(np.any(x != y))
    return {
        "n_users": len(users),
        "t_pvalue": _pvalue(stats.ttest_rel(x, y)) if differ else 1.0,
        "wilcoxon_pvalue": _pvalue(stats.wilcoxon(x, y)) if differ else 1.0,
    }, notes


def compare_seeds(
    a: SeedResults, b: SeedResults, metric: str = "NDCG@10", part: str = "test", subset: str = "all",
    alpha: float = ALPHA,
) -> Comparison:
    """Does configuration A differ from B on `metric` beyond noise? See the module's docstring."""
    if not a or not b:
        raise ValueError(f"each run needs at least one seed with results (A has {len(a)}, B {len(b)})")
    for name, runs in (("A", a), ("B", b)):
        for seed, results in runs.items():
            if part not in results:
                raise ValueError(f"run {name}, seed {seed}: no {part!r} results")
            if metric not in _values(results[part], subset):
                known = ", ".join(_values(results[part], subset))
                raise ValueError(f"run {name}, seed {seed}: no metric {metric!r} (it has {known})")
    per_a = {s: _values(r[part], subset)[metric] for s, r in sorted(a.items())}
    per_b = {s: _values(r[part], subset)[metric] for s, r in sorted(b.items())}
    mean_a, mean_b = float(np.mean(list(per_a.values()))), float(np.mean(list(per_b.values())))
    std_a, std_b = _std(list(per_a.values())), _std(list(per_b.values()))
    diff = mean_a - mean_b
    seed_test, notes = _seed_test(per_a, per_b)
    user_test, user_notes = _user_test(a, b, part, metric, subset)
    notes += user_notes

    where = f"{part} {metric}" + (" (cold start)" if subset == "cold_start" else "")
    spread_a = f"{mean_a:.4f}" + (f" ± {std_a:.4f}" if std_a is not None else "") + f" over {len(per_a)} seed(s)"
    spread_b = f"{mean_b:.4f}" + (f" ± {std_b:.4f}" if std_b is not None else "") + f" over {len(per_b)} seed(s)"
    sizes = f"A {spread_a}, B {spread_b}"
    better = "A is better than B" if diff > 0 else "B is better than A"
    if seed_test is not None:
        n, p = seed_test["n_seeds"], seed_test["pvalue"]
        significant = p < alpha
        if significant:
            verdict = f"{better} on {where} by {abs(diff):.4f} ({sizes}): {seed_test['kind']}, p = {p:.3g}."
        else:
            verdict = (f"Within noise: {where} differs by {diff:+.4f} ({sizes}), not significant across "
                       f"{n} seeds ({seed_test['kind']}, p = {p:.3g}).")
        if n < FEW_SEEDS:
            notes.append(f"with only {n} seeds the test across seeds has little power: 'within noise' means "
                         "not shown to differ, not shown to be equal; more seeds would settle smaller differences")
        if user_test is not None and user_test["t_pvalue"] < alpha and not significant:
            notes.append(f"across users the difference is significant (paired t-test p = {user_test['t_pvalue']:.3g}), "
                         "but that test holds the trained models fixed and cannot see seed-to-seed variation")
        for std, name in ((std_a, "A"), (std_b, "B")):
            if std is not None and abs(diff) < std:
                notes.append(f"the difference is smaller than one standard deviation of {name} over seeds ({std:.4f})")
                break
    elif user_test is not None:
        p = user_test["t_pvalue"]
        significant = p < alpha
        verdict = ((f"{better} on {where} by {abs(diff):.4f} across users" if significant
                    else f"Within noise across users: {where} differs by {diff:+.4f}")
                   + f" ({sizes}; paired t-test over {user_test['n_users']:,} users, p = {p:.3g}). "
                   "Untested across seeds: one run per configuration cannot tell a seed's luck from a real difference.")
    else:
        significant = False
        verdict = f"Untested: {where} differs by {diff:+.4f} ({sizes}), and neither test could be run."
    return Comparison(part, subset, metric, per_a, per_b, mean_a, mean_b, std_a, std_b, diff,
                      seed_test, user_test, significant, verdict, notes)
