"""Print the objectives table of docs/objectives.md from this folder's results.json.

    .venv/bin/python -m ticgrpo.cli lab bias --objectives all,nthr,tic_ratio_only,no_is_tokensum --out docs/lab/objectives
    .venv/bin/python docs/lab/objectives/table.py [--k 4,16]

Relative errors are those of the exact E[ĝ] with the fixed baseline ("fixed (exact)" rows);
tr Cov(ĝ) per group is the Monte Carlo value with the same fixed baseline ("fixed (MC)"), so
every objective is measured with the same advantage; in brackets tr Cov/‖E ĝ‖², the variance
relative to the estimator's own scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(x: float) -> str:
    return f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--k", default="4,16", help="inner steps shown besides k = 0")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    ks = [int(k) for k in args.k.split(",")]
    kl = {p["k"]: p["kl_old_theta"] for p in results["path"]}
    grad_norm = {p["k"]: p["grad_norm"] for p in results["path"]}
    rows = {(r["variant"], r["k"], r["estimate"]): r for r in results["rows"]}
    head = ["objective", "‖Eĝ‖/‖∇J‖, cos at k=0", "rel err k=0"]
    head += [f"rel err vs ∇J(θ) / ∇J(θ_old), k={k} (KL {kl[k]:.3g})" for k in ks]
    head += ["tr Cov (rel) k=0"] + [f"tr Cov (rel) k={k}" for k in ks]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in results["config"]["objectives"]:
        # a group-coupled objective (nthr) has no exact expectation: its row is the Monte Carlo
        # mean, marked "(MC)", whose sampling noise the report states
        estimate = "fixed (exact)" if (name, 0, "fixed (exact)") in rows else "fixed (MC)"
        mark = "" if estimate == "fixed (exact)" else " (MC)"
        first = rows[(name, 0, estimate)]
        cells = [f"`{name}`{mark}", f"{fmt(first['norm_ratio_current'])}, {fmt(first['cos_current'])}",
                 fmt(first["rel_err_current"])]
        for k in ks:
            e = rows[(name, k, estimate)]
            cells.append(f"{fmt(e['rel_err_current'])} / {fmt(e['rel_err_old'])}")
        for k in [0, *ks]:
            cov = rows[(name, k, "fixed (MC)")]["trace_cov"]
            mean_norm = rows[(name, k, estimate)]["norm_ratio_current"] * grad_norm[k]
            cells.append(f"{fmt(cov)} ({fmt(cov / mean_norm**2)})")
        print("| " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
