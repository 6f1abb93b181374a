"""`ticgrpo compare` / `ticgrpo report`: planning, validation, resume, parallel runs, report, statistics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import ticgrpo.train
from ticgrpo.cli import main
from ticgrpo.compare import execute
from ticgrpo.compare.plan import DONE_MARKER, MARKER, apply_algorithm, plan_comparison, resolve_algorithm
from ticgrpo.config import ConfigError, config_to_yaml, load_config
from ticgrpo.core.objectives import make_objective_config

PNGS = ("reward.png", "accuracy.png", "clip_frac.png", "completion_length.png")


def base_config(**sections) -> dict:
    cfg: dict[str, Any] = {
        "max_steps": 2,
        "model": {"name": "tiny-test", "chat_template": False},
        "data": {"train": {"task": "arithmetic", "level": 2, "split": "train", "num_train": 40, "num_eval": 4},
                 "eval": {"task": "arithmetic", "level": 2, "split": "eval", "num_eval": 4}},
        "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 3},
        "algorithm": {"rewards": [{"name": "answer_format", "weight": 1.0}], "num_iterations": 2,
                      "log_entropy": False},
        "optim": {"lr": 1e-2},
        "eval": {"every_steps": 0, "num_examples": 2, "reward": "answer_format"},
        "logging": {"progress_bar": False, "plot": False, "samples_per_step": 0},
        "checkpoint": {"every_steps": 1, "keep_last": 0, "save_final": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(base_config(**sections)))
    return path


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the in-process train() calls of the comparison (run folder, resume flag)."""
    calls = []
    real = ticgrpo.train.train

    def counting(config, resume=False, **kwargs):
        calls.append((Path(config.output_dir).relative_to(Path(config.output_dir).parents[1]).as_posix(), resume))
        return real(config, resume=resume, **kwargs)

    monkeypatch.setattr(ticgrpo.train, "train", counting)
    return calls


def results_table(report: Path) -> list[str]:
    lines = report.read_text().split("## Results", 1)[1].strip().splitlines()
    return [line for line in lines[: lines.index("")] if line.startswith("|")]


def test_compare_report_resume_and_rebuild(tmp_path, train_calls, capsys):
    config = write_config(tmp_path / "base.yaml")
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(config), "--algorithms", "tic_grpo,grpo", "--seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    assert sorted(train_calls) == sorted((f"{a}/seed-{s}", False) for a in ("tic_grpo", "grpo") for s in (0, 1))
    for algorithm in ("tic_grpo", "grpo"):
        for seed in (0, 1):
            run = out / "runs" / algorithm / f"seed-{seed}"
            marker = json.loads((run / MARKER).read_text())
            assert (marker["algorithm"], marker["seed"]) == (algorithm, seed)
            assert (run / DONE_MARKER).is_file() and (run / "eval.jsonl").is_file()
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["seed"] == seed and cfg["algorithm"]["objective"]["name"] == algorithm
    saved = yaml.safe_load((out / "runs/tic_grpo/seed-0/config.yaml").read_text())["algorithm"]
    assert saved["advantage"]["name"] == "length_corrected"
    report = out / "report.md"
    table = results_table(report)
    assert [line.split("|")[1].strip() for line in table[2:]] == ["tic_grpo", "grpo"]
    assert all("0,1" in line for line in table[2:])
    text = report.read_text()
    assert "Welch" in text and "| tic_grpo | grpo |" in text and "power is low" in text
    for name in PNGS:
        assert (out / "plots" / name).stat().st_size > 1000, name
        assert f"plots/{name}" in text
    assert (out / "plots" / "log_w.png").is_file() and (out / "plots" / "ratio.png").is_file()
    # diagnostics: each cell is the reduction of that metric over every step of every seed
    summary_rows = {r["algorithm"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    logged = [json.loads(line) for seed in (0, 1)
              for line in (out / f"runs/tic_grpo/seed-{seed}/metrics.jsonl").read_text().splitlines()]
    tic = summary_rows["tic_grpo"]["diagnostics"]
    assert tic["log_w_min"] == min(m["log_w_min"] for m in logged)
    assert tic["grad_norm_max"] == max(m["grad_norm_max"] for m in logged)
    assert tic["ratio_min"] is None and summary_rows["grpo"]["diagnostics"]["log_w_max"] is None
    assert "## Diagnostics" in text and "| tic_grpo | " in text.split("## Diagnostics")[1]

    # resume: finished runs are skipped, a deleted run is redone, an interrupted one continues
    done_mtimes = {p: p.stat().st_mtime_ns for p in out.glob(f"runs/*/*/{DONE_MARKER}")}
    shutil.rmtree(out / "runs/grpo/seed-1")
    interrupted = out / "runs/tic_grpo/seed-0"
    (interrupted / DONE_MARKER).unlink()
    shutil.rmtree(interrupted / "checkpoints/step-0002")
    train_calls.clear()
    assert main([*args, "--no-report"]) == 0
    assert sorted(train_calls) == [("grpo/seed-1", False), ("tic_grpo/seed-0", True)]
    for path, mtime in done_mtimes.items():
        if "grpo/seed-1" not in path.as_posix() and path.parent != interrupted:
            assert path.stat().st_mtime_ns == mtime, path
    assert (out / "runs/grpo/seed-1" / DONE_MARKER).is_file() and (interrupted / DONE_MARKER).is_file()
    steps = [json.loads(x)["step"] for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    train_calls.clear()
    assert main([*args, "--no-report"]) == 0 and train_calls == []  # everything finished: nothing runs

    # `report` rebuilds the same table from the run folders (the whole comparison or single runs)
    assert main(["report", str(out)]) == 0
    run_dirs = [str(out / "runs" / a / f"seed-{s}") for a in ("grpo", "tic_grpo") for s in (0, 1)]
    assert main(["report", *run_dirs, "--out", str(tmp_path / "rebuilt")]) == 0
    assert results_table(tmp_path / "rebuilt" / "report.md") == results_table(report)
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert rows == json.loads((tmp_path / "rebuilt" / "summary.json").read_text())["rows"]
    assert [r["algorithm"] for r in rows] == ["tic_grpo", "grpo"]  # the comparison's order, from comparison.json

    # the same folder with a different config is refused before anything runs
    capsys.readouterr()
    train_calls.clear()
    assert main([*args, "--set", "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "optim.lr" in err and len(err.strip().splitlines()) == 1
    assert train_calls == []


def test_parallel_subprocesses(tmp_path):
    config = write_config(tmp_path / "base.yaml", max_steps=1, eval={"at_start": False},
                          checkpoint={"every_steps": 0})
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--algorithms", "no_is", "--seeds", "0,1", "--out", str(out),
                 "--parallel", "2"]) == 0
    for seed in (0, 1):
        run = out / "runs/no_is" / f"seed-{seed}"
        assert (run / DONE_MARKER).is_file(), (run / "train.log").read_text()
        assert "trained 1 steps" in (run / "train.log").read_text()
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    table = results_table(out / "report.md")
    assert table[2].startswith("| no_is | 0,1 |")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--algorithms", "tic_grpo,grpoo"], "did you mean 'grpo'"),
        (["--algorithms", "grpo", "--set", "optim.lrr=1"], "optim.lrr"),
        (["--algorithms", "grpo", "--seeds", "0,x"], "not an integer"),
        # valid for tic_grpo, invalid for the second algorithm: caught before the first run starts
        (["--algorithms", "tic_grpo,no_is", "--set", "algorithm.objective.epsilon_high=0.3"], "no_is"),
        (["--algorithms", "mine"], "epsilon_hihg"),
        (["--algorithms", "grpo", "--set", "algorithm.objective=grpo"], "every run the same"),
        (["--algorithms", "grpo", "--set", "algorithm.preset=dapo"], "every run the same"),
    ],
)
def test_config_errors_exit_2_before_any_run(tmp_path, monkeypatch, capsys, extra, message):
    def no_training(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(ticgrpo.train, "train", no_training)
    monkeypatch.setattr(execute, "run_subprocess", no_training)
    config = base_config()
    config["compare"] = {"algorithms": {"mine": {"objective": {"name": "tic_grpo", "epsilon_hihg": 1}}}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(path), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_algorithm_resolution():
    only = resolve_algorithm("tic_ratio_only")
    assert (only["objective"], only["advantage"]) == ({"name": "tic_grpo", "epsilon_high": None}, "group_norm")
    assert resolve_algorithm("tic_ratio_lenadv")["advantage"] == "length_corrected"
    assert resolve_algorithm("tic_ratio_clip")["objective"]["epsilon_high"] == 0.2
    full = resolve_algorithm("tic_grpo")
    assert (full["advantage"], full["objective"]["epsilon_high"]) == ("length_corrected", 0.2)
    assert resolve_algorithm("dapo")["dynamic_sampling"] is True  # the table's trainer mechanisms
    bnpo = resolve_algorithm("bnpo")
    assert (bnpo["objective"]["name"], bnpo["advantage"], bnpo["objective"]["epsilon_high"]) == \
        ("grpo", "beta_norm", 0.28)
    assert resolve_algorithm("gtpo")["source"] == "table" and resolve_algorithm("grpo")["description"]
    custom = {"tic_grpo": {"objective": {"name": "tic_grpo", "epsilon_high": 0.5}}}
    assert resolve_algorithm("tic_grpo", custom)["objective"] == {"name": "tic_grpo", "epsilon_high": 0.5}
    with pytest.raises(ValueError, match="did you mean 'tic_ratio_clip'"):
        resolve_algorithm("tic_ratio_clp")
    replaced = (r"compare.algorithms.old.objective_options was replaced by compare.algorithms.old.objective: "
                r"write compare.algorithms.old.objective: \{name: grpo, epsilon_high: 0.3\}")
    with pytest.raises(ConfigError, match=replaced):
        resolve_algorithm("old", {"old": {"objective": "grpo", "objective_options": {"epsilon_high": 0.3}}})

    base = base_config(algorithm={"objective": {"name": "tic_grpo", "epsilon_high": 0.1},
                                  "advantage": {"name": "group_norm", "delta": 0.5}, "num_iterations": 3})
    raw = apply_algorithm(base, resolve_algorithm("no_is"))
    algo = raw["algorithm"]
    # the whole method nodes are replaced: tic_grpo's epsilon_high and the advantage options do not leak
    assert (algo["objective"], algo["advantage"], algo["num_iterations"]) == ("no_is", None, 3)
    config = load_config(raw)
    assert config.algorithm.objective.options == make_objective_config("no_is")
    assert (config.algorithm.advantage.name, config.algorithm.advantage.options) == ("group_norm", {})
    raw = apply_algorithm(base, {"objective": "grpo", "set": {"optim.lr": 0.5}})
    assert raw["optim"]["lr"] == 0.5 and base["optim"]["lr"] == 1e-2


def test_plan_validates_and_classifies(tmp_path):
    plan = plan_comparison(base_config(), "tic_ratio_only,grpo", "3,4", tmp_path / "cmp",
                           ["algorithm.objective.beta=0.0"])
    assert [(r.algorithm, r.seed, r.status) for r in plan.runs] == [
        ("tic_ratio_only", 3, "new"), ("grpo", 3, "new"), ("tic_ratio_only", 4, "new"), ("grpo", 4, "new")]
    first = plan.runs[0].config
    assert first.seed == 3 and first.algorithm.objective.name == "tic_grpo"
    assert first.algorithm.objective.options == make_objective_config("tic_grpo", {"epsilon_high": None, "beta": 0.0})
    assert first.output_dir == str(tmp_path / "cmp/runs/tic_ratio_only/seed-3")


def finished_run(tmp_path: Path, algorithm: str) -> tuple:
    """A planned run of `algorithm` (seed 0) marked finished, and its config as config.yaml would hold it."""
    run = plan_comparison(base_config(), algorithm, "0", tmp_path / "cmp").runs[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / MARKER).write_text(json.dumps({"algorithm": algorithm, "seed": 0}))
    (run.run_dir / DONE_MARKER).write_text("{}")
    return run, yaml.safe_load(config_to_yaml(run.config))


def test_a_run_saved_with_the_old_options_form_still_matches(tmp_path):
    """Run folders written before the options nested under their method (objective_options) resume."""
    run, saved = finished_run(tmp_path, "tic_ratio_only")
    objective = saved["algorithm"]["objective"]
    saved["algorithm"]["objective"] = objective.pop("name")
    saved["algorithm"]["objective_options"] = objective
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert plan_comparison(base_config(), "tic_ratio_only", "0", tmp_path / "cmp").runs[0].status == "done"


def test_a_run_saved_with_eval_mean_at_k_still_matches(tmp_path):
    """Run folders written before eval.ks (eval.mean_at_k: k) read as eval.ks: [k] (0: [])."""
    run, saved = finished_run(tmp_path, "grpo")
    for key in ("ks", "metrics", "save_samples"):
        del saved["eval"][key]
    saved["eval"]["mean_at_k"] = 0
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert plan_comparison(base_config(), "grpo", "0", tmp_path / "cmp").runs[0].status == "done"
    saved["eval"]["mean_at_k"] = 4  # four sampled completions per prompt: not this run
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"different config.*eval\.ks"):
        plan_comparison(base_config(), "grpo", "0", tmp_path / "cmp")


def test_a_run_saved_with_behavior_correction_still_matches(tmp_path):
    """Run folders written before algorithm.offpolicy_correction (behavior_correction: null,
    behavior_correction_cap: 2.0, as docs/results/*/config.yaml hold them) are still done."""
    run, saved = finished_run(tmp_path, "grpo")
    del saved["algorithm"]["offpolicy_correction"]
    saved["algorithm"].update(behavior_correction=None, behavior_correction_cap=2.0)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert plan_comparison(base_config(), "grpo", "0", tmp_path / "cmp").runs[0].status == "done"
    saved["algorithm"]["behavior_correction"] = "token"  # a corrected run is not this uncorrected one
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"different config.*algorithm\.offpolicy_correction"):
        plan_comparison(base_config(), "grpo", "0", tmp_path / "cmp")


def test_run_saved_before_a_config_key_existed_still_matches(tmp_path):
    """A finished run whose config.yaml predates a key (now at its default) is not 'different';
    a real difference still is."""
    run, saved = finished_run(tmp_path, "grpo")
    del saved["algorithm"]["offpolicy_correction"], saved["rollout"]["vllm"]  # keys added later
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert plan_comparison(base_config(), "grpo", "0", tmp_path / "cmp").runs[0].status == "done"
    saved["optim"]["lr"] = 0.5
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"different config.*optim\.lr"):
        plan_comparison(base_config(), "grpo", "0", tmp_path / "cmp")


def test_preregistered_config_splits_the_ratio_from_the_aggregation_at_two_lags(tmp_path):
    """docs/results.md's pre-registered arms are the runs configs/preregistered.yaml plans."""
    root = Path(__file__).resolve().parents[1]
    plan = plan_comparison(root / "configs" / "preregistered.yaml", None, None, tmp_path / "prereg")
    assert plan.seeds == list(range(10)) and len(plan.algorithms) == 12 and len(plan.runs) == 120
    configs = {run.algorithm: run.config for run in plan.runs if run.seed == 0}
    options = {name: c.algorithm.objective.options for name, c in configs.items()}
    assert options["grpo"].aggregation == "seq-mean-token-mean"
    assert options["grpo_sum"].aggregation == "seq-mean-token-sum"
    assert options["grpo_sum"].epsilon_low == options["grpo_sum"].epsilon_high == 0.2  # the clip stays
    assert options["tic_grpo_len"].length_normalize and not options["tic_grpo"].length_normalize
    assert options["tic_ratio_only"].epsilon_high is None
    for name, config in configs.items():
        assert config.rollout.lag == (4 if name.endswith("_lag4") else 0), name
        assert config.max_steps == 40 and config.eval.num_examples == 300 and config.eval.every_steps == 4
        if name.endswith("_lag4"):  # the same arm as at lag 0, apart from the lag
            base = configs[name.removesuffix("_lag4")]
            assert config.algorithm.objective == base.algorithm.objective, name
            advantage, base_advantage = config.algorithm.advantage, base.algorithm.advantage
            assert (advantage.name, advantage.options) == (base_advantage.name, base_advantage.options), name


def test_ablation_config_plans_the_paper_ablation(tmp_path):
    root = Path(__file__).resolve().parents[1]
    plan = plan_comparison(root / "configs" / "ablation.yaml", None, None, tmp_path / "abl")
    assert plan.algorithms == ["tic_grpo", "grpo", "no_is", "tic_ratio_only", "tic_ratio_lenadv", "tic_ratio_clip"]
    assert plan.seeds == [0, 1, 2] and len(plan.runs) == 18
    quickstart = yaml.safe_load((root / "configs" / "quickstart.yaml").read_text())
    config = plan.runs[0].config
    assert config.model.name == quickstart["model"]["name"] and config.max_steps == 12  # ablation.yaml refines it
    assert config.optim.lr == quickstart["optim"]["lr"] and config.rollout.num_generations == 8
    assert config.checkpoint.every_steps > 0  # resumable
