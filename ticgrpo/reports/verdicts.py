"""The verdicts on the paper's claims, recomputed from the committed study results.

    python -m ticgrpo.reports.verdicts            # prints the table of docs/results.md ("Verdicts")
    python -m ticgrpo.reports.verdicts --check docs/results.md   # exit 1 if the docs' table differs
    python -m ticgrpo.reports.verdicts --write docs/results.md   # replace the docs' table with the recomputed one

Each row applies the rule its study pre-registered (docs/lab.md, docs/results.md) to the numbers
in that study's committed `results.json`; the lab reports themselves rebuild from the same files
(tests/test_committed_reports.py). A study whose results are not committed yields no row, and a
comparison that was not pre-registered is marked exploratory and gets no verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticgrpo.reports.markdown import markdown_table

DOCS = Path(__file__).parents[2] / "docs"
BEGIN, END = "<!-- verdicts: begin (python -m ticgrpo.reports.verdicts) -->", "<!-- verdicts: end -->"
ALPHA = 0.05
SMALL_BIAS = 0.1  # docs/lab.md, lag pre-registration: "the bias is small" = rel err vs ∇J(θ_t) below 0.1
IDENTITY = 1e-12  # the same pre-registration: the trajectory ratio's rel err is an identity at ≤ 1e-12
SEEDS = "0,1,2,3,4,5,6,7,8,9"
LAG_COMMAND = f"ticgrpo lab lag --seeds {SEEDS} --threads 1 --out docs/lab/lag"
LAG_NEURAL_COMMAND = f"ticgrpo lab lag --policy neural --lr 0.01 --seeds {SEEDS} --threads 1 --out docs/lab/lag_neural"
CONVERGE_ALGORITHMS = "grpo,grpo_tokensum,no_is,tic_ratio_only,tic_ratio_lenadv,tic_grpo"
LAG_PROBLEMS = (("lag", "lab A (tabular)", LAG_COMMAND), ("lag_neural", "lab B (neural)", LAG_NEURAL_COMMAND))


@dataclass(frozen=True)
class Verdict:
    claim: str
    regime: str
    verdict: str
    evidence: str
    command: str


def _load(relative: str) -> dict[str, Any] | None:
    path = DOCS / relative
    return json.loads(path.read_text()) if path.is_file() else None


def _interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _levels(levels: list[tuple[Any, str]]) -> str:
    """'refuted at k = 1, 2; inconclusive at k = 4' from (level, verdict) pairs, in order."""
    groups: dict[str, list[str]] = {}
    for level, verdict in levels:
        groups.setdefault(verdict, []).append(str(level))
    return "; ".join(f"{verdict} at {', '.join(values)}" for verdict, values in groups.items())


def _tested(row: dict[str, Any], positive: str, negative: str) -> str:
    """The pre-registered reading of a paired comparison: its sign where Holm p < α, else inconclusive."""
    p = row.get("p_holm")
    if p is None or not math.isfinite(p) or p >= ALPHA:
        return "inconclusive"
    return positive if row["mean"] > 0 else negative


def claim1_lab() -> Iterator[Verdict]:
    for folder, regime, command in LAG_PROBLEMS:
        results = _load(f"lab/{folder}/results.json")
        if results is None:
            continue
        name = "lag: grpo_tokensum.rel_err_current − grpo_tokensum.rel_err_old"
        rows = [c for c in results["comparisons"] if c["comparison"] == name and c["k"] > 0]  # k = 0: identical
        levels = [(f"k = {r['k']}", _tested(r, "supported", "refuted (nearer ∇J(θ_t))")) for r in rows]
        last = rows[-1]
        yield Verdict("1. the token ratio estimates ∇J(θ_old)", f"{regime}, lag k, token ratio without clip and 1/|o|",
                      _levels(levels), f"rel err vs ∇J(θ_t) − vs ∇J(θ_old) at k = {last['k']}: "
                      f"{_interval(last['mean'], last['low'], last['high'])}, Holm p {last['p_holm']:.2g}", command)
        inner = [c for c in results["comparisons"]
                 if c["comparison"] == name.replace("lag:", "mu:", 1) and c["k"] > 1]  # k holds μ; μ = 1: identical
        last = inner[-1]
        yield Verdict("1. the token ratio estimates ∇J(θ_old)", f"{regime}, μ inner steps, the same estimator",
                      _levels([(f"μ = {r['k']}", _tested(r, "supported", "refuted (nearer ∇J(θ))")) for r in inner]),
                      f"at μ = {last['k']}: {_interval(last['mean'], last['low'], last['high'])}, "
                      f"Holm p {last['p_holm']:.2g}", command)
        small = [(f"k = {r['k']}", "holds" if r["rel_err_current"]["high"] < SMALL_BIAS else
                  "fails" if r["rel_err_current"]["low"] > SMALL_BIAS else "inconclusive")
                 for r in results["summary"]["lag"] if r["variant"] == "grpo_tokensum" and r["k"] > 0]
        worst = max((r for r in results["summary"]["lag"] if r["variant"] == "grpo_tokensum"), key=lambda r: r["k"])
        yield Verdict("1. … and its bias is small (< 0.1)", f"{regime}, lag k", _levels(small),
                      f"rel err vs ∇J(θ_t) at k = {worst['k']}: {worst['rel_err_current']['mean']:.3f} "
                      f"[{worst['rel_err_current']['low']:.3f}, {worst['rel_err_current']['high']:.3f}]", command)


REAL_MODEL = ("checkpoint_lag", "checkpoint_lag_t4")  # θ_t = step 8, then the addendum's step 4


def claim1_real_model() -> Iterator[Verdict]:
    for folder in REAL_MODEL:
        results = _load(f"lab/{folder}/results.json")
        if results is not None:
            yield from _real_model_rows(results, folder)


def _real_model_rows(results: dict[str, Any], folder: str) -> Iterator[Verdict]:
    config = results["config"]
    command = (f"ticgrpo lab checkpoint_lag --run runs/claim1-path --step {config['step']} --lags "
               f"{','.join(map(str, config['lags']))} --groups {config['groups']} --out docs/lab/{folder}")
    regime = f"SmolLM2-135M, real checkpoints, θ_t = step {config['step']}, lag k"
    levels, shown = [], []
    for k, lag in results["lags"].items():
        grpo = lag["variants"]["grpo"]
        position, gap = grpo["position"], grpo["target_gap2"]
        if gap["low"] <= 0 or position["undefined_frac"] > 0.05 or not math.isfinite(position["value"]):
            verdict = "inconclusive (noise-dominated)"
        elif position["low"] > 0:
            verdict = "refuted"
        elif position["high"] < 1:
            verdict = "supported"
        else:
            verdict = "inconclusive"
        levels.append((f"k = {k}", verdict))
        value = "undefined" if not math.isfinite(position["value"]) else \
            _interval(position["value"], position["low"], position["high"], 2)
        shown.append(f"k = {k}: λ_grpo {value}")
    yield Verdict("1. GRPO's stale update is its on-policy update at θ_old", regime,
                  _levels(levels), "; ".join(shown), command)
    corrected = []
    for k, lag in results["lags"].items():
        difference = lag.get("position_differences", {}).get("tic_grpo − grpo")
        if difference is None:
            continue
        resolved = math.isfinite(difference["value"]) and difference["undefined_frac"] <= 0.05
        verdict = ("moves it toward θ_t" if difference["low"] > 0 else "not shown") if resolved else \
            "inconclusive (noise-dominated)"
        corrected.append((f"k = {k}", verdict, difference))
    if corrected:
        last = corrected[-1][2]
        yield Verdict("3. TIC-GRPO's trajectory ratio corrects it", regime,
                      _levels([(level, verdict) for level, verdict, _ in corrected]),
                      f"λ_tic − λ_grpo at {corrected[-1][0]}: " + (
                          _interval(last["value"], last["low"], last["high"], 2) if math.isfinite(last["value"])
                          else "undefined"), command)


def claim3_lab() -> Iterator[Verdict]:
    for folder, regime, command in LAG_PROBLEMS:
        results = _load(f"lab/{folder}/results.json")
        if results is None:
            continue
        ratio_only = [r for part in ("lag", "mu") for r in results["summary"][part] if r["variant"] == "tic_ratio_only"]
        largest = max(r["rel_err_current"]["high"] for r in ratio_only)
        yield Verdict("3. the trajectory ratio estimates ∇J(θ_t)", f"{regime}, ratio alone, every lag and μ",
                      "supported" if largest <= IDENTITY else "refuted",
                      f"largest rel err vs ∇J(θ_t) (interval end): {largest:.2g}", command)
        clipped = max((r for r in results["summary"]["lag"] if r["variant"] == "tic_grpo"), key=lambda r: r["k"])
        error = clipped["rel_err_current"]
        verdict = "refuted" if error["low"] > SMALL_BIAS else "supported" if error["high"] < SMALL_BIAS else \
            "inconclusive"
        yield Verdict("3. … with TIC-GRPO's upper-only clip", f"{regime}, k = {clipped['k']}", verdict,
                      f"rel err vs ∇J(θ_t): {error['mean']:.3f} [{error['low']:.3f}, {error['high']:.3f}]", command)


def variance_and_lag_lab() -> Iterator[Verdict]:
    for folder, regime, command in LAG_PROBLEMS:
        results = _load(f"lab/{folder}/results.json")
        if results is None:
            continue
        sweep = [c for c in results["comparisons"]
                 if c["comparison"].startswith("sweep: log(tic_ratio_only.noise_to_signal")]
        longest = max(sweep, key=lambda c: c["L"])
        yield Verdict("reviewers: the trajectory ratio's variance grows with the length",
                      f"{regime}, per-token KL 0.05, L = {longest['L']}",
                      _tested(longest, "supported", "refuted"),
                      f"log(noise-to-signal, trajectory / token): "
                      f"{_interval(longest['mean'], longest['low'], longest['high'])} "
                      f"(×{math.exp(longest['mean']):.2f}), Holm p {longest['p_holm']:.2g}", command)
        mse = [c for c in results["comparisons"] if "relative_mse_batch / grpo_tokensum" in c["comparison"]
               and (c.get("L") is not None or (c.get("k") or 0) > 0) and not c["comparison"].startswith("mu")]
        levels = [(f"L = {c['L']}" if c.get("L") is not None else f"k = {c['k']}",
                   _tested(c, "token ratio better", "trajectory ratio better")) for c in mse]
        yield Verdict("where the trajectory ratio beats the token ratio (batch MSE for ∇J(θ_t))",
                      f"{regime}, lag k and length sweep L", _levels(levels),
                      "log MSE ratio trajectory / token, Holm over the problem's comparisons", command)


FACTORIAL_COMPARISONS = ("tic_grpo − grpo (defaults)", "ratio: trajectory − token", "ratio × aggregation",
                         "aggregation: token_sum − per_sequence", "clip: upper_only − symmetric",
                         "advantage: length_corrected − group_norm")


def factorial_lab() -> Iterator[Verdict]:
    results = _load("lab/factorial/results.json")
    if results is None:
        return
    command = "ticgrpo lab factorial --max-len 6 --threads 1 --out docs/lab/factorial"
    for name in FACTORIAL_COMPARISONS:
        rows = [c for c in results["comparisons"] if c["comparison"] == name and c["metric"] == "mean_J"]
        levels = [(r["reward"], r["verdict"]) for r in rows]
        widest = max(rows, key=lambda r: r["high"] - r["low"])
        yield Verdict(f"components: {name}", "lab factorial, lr tuned per arm, rewards long/short/first",
                      _levels(levels), f"widest: {widest['reward']} "
                      f"{_interval(widest['mean'], widest['low'], widest['high'], 4)} (mean J)", command)


CONVERGE = (("converge", "tabular, lr 0.05"), ("converge_neural", "neural, lr 0.05"),
            ("converge_neural_lr0.01", "neural, lr 0.01"))
TRAINING_CLAIMS = {"no_is": "2. no_is ≈ GRPO", "tic_grpo": "3. TIC-GRPO converges faster"}


def exploratory_training() -> Iterator[Verdict]:
    """Training comparisons that were not pre-registered: reported, never given a verdict."""
    for folder, setting in CONVERGE:
        results = _load(f"lab/{folder}/results.json")
        if results is None:
            continue
        c = results["config"]
        command = (f"ticgrpo lab converge --algorithms {CONVERGE_ALGORITHMS} --policy {c['policy']} --lr {c['lr']:g} "
                   f"--iterations {c['iterations']} --seeds $(seq -s, 0 {len(c['seeds']) - 1}) --out docs/lab/{folder}")
        for name, claim in TRAINING_CLAIMS.items():
            row = results["summary"][name]
            yield Verdict(claim, f"lab converge, {setting}, {len(c['seeds'])} seeds, lr not tuned per arm",
                          "no verdict (exploratory)", f"{name} − grpo mean J over training "
                          f"{row['mean_minus_reference']:+.4f} ± {row['mean_minus_reference_half_width']:.4f}", command)
    summary = _load("results/ablation-h100/summary.json")
    if summary is None:
        return
    command = "ticgrpo compare --config configs/ablation.yaml --seeds 0,1,2,3,4 --parallel 10 (H100)"
    for test in summary["tests"]:
        if test["b"] == "grpo" and test["a"] in TRAINING_CLAIMS:
            sign, name = 1, test["a"]
        elif test["a"] == "grpo" and test["b"] in TRAINING_CLAIMS:
            sign, name = -1, test["b"]
        else:
            continue
        yield Verdict(TRAINING_CLAIMS[name], "SmolLM2-135M, quickstart task, 12 steps, 5 seeds (not pre-registered)",
                      "no verdict (exploratory)", f"{name} − grpo final accuracy {sign * test['diff']:+.3f}, "
                      f"paired p {test['paired_p']:.2g} (uncorrected)", command)


SOURCES: tuple[Callable[[], Iterator[Verdict]], ...] = (
    claim1_lab, claim1_real_model, claim3_lab, variance_and_lag_lab, factorial_lab, exploratory_training,
)


def verdicts() -> list[Verdict]:
    return [v for source in SOURCES for v in source()]


def verdict_table() -> str:
    rows = [[v.claim, v.regime, v.verdict, v.evidence, f"`{v.command}`"] for v in verdicts()]
    return markdown_table(["claim", "regime", "verdict", "evidence", "command"], rows)


def documented_table(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ticgrpo.reports.verdicts", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, help="a markdown file whose verdict table must equal the recomputed one")
    action.add_argument("--write", type=Path, help="a markdown file whose verdict table is replaced by the new one")
    args = parser.parse_args(argv)
    table = verdict_table()
    target = args.check or args.write
    if target is None:
        print(table)
        return 0
    text = target.read_text()
    documented = documented_table(text)
    if documented is None:
        print(f"{target}: no verdict table between {BEGIN} and {END}", file=sys.stderr)
        return 2
    if args.write is not None:
        head, rest = text.split(BEGIN, 1)
        target.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
        print(f"{target}: verdict table written")
        return 0
    if documented != table.strip():
        print(f"{target}: the verdict table differs from the committed results; rewrite it with "
              f"`python -m ticgrpo.reports.verdicts --write {target}`", file=sys.stderr)
        return 1
    print(f"{target}: the verdict table matches the committed results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
