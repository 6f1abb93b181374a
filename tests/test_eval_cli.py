"""`ticgrpo eval` end to end: the tiny in-process model through main() and a real subprocess, a
trained run's checkpoint and final/ (whose numbers equal the trainer's own held-out evaluation),
bad input as one-line errors, and the bundled SmolLM2 on a few problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ticgrpo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-test", "--data", "arithmetic:level=2", "--no-progress"]


def _read(out: Path) -> tuple[dict, list[dict]]:
    report = json.loads((out / "eval.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return report, samples


def test_tiny_model_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(["eval", *TINY, "--k", "1,2", "--num-examples", "4", "--max-new-tokens", "8", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "greedy_accuracy" in printed and "pass@2" in printed and "constant baseline" in printed
    report, samples = _read(out)
    assert set(report["metrics"]) == {"greedy_accuracy", "avg@1", "avg@2", "pass@1", "pass@2", "maj@1", "maj@2",
                                      "mean_length", "truncation_rate"}
    for name, metric in report["metrics"].items():
        assert metric["low"] <= metric["value"] <= metric["high"], name
    assert report["metrics"]["mean_length"]["value"] <= 8 and report["num_problems"] == 4
    assert report["settings"]["ks"] == [1, 2] and report["settings"]["temperature"] == 1.0
    assert report["constant_baseline"]["score"] == pytest.approx(0.25)  # four distinct sums
    assert len(samples) == 4
    for sample in samples:
        assert sample["prompt"].startswith("<|im_start|>user") and sample["gold"].isdigit()
        assert len(sample["samples"]) == 2 and set(sample["greedy"]) == {"text", "answer", "correct", "length",
                                                                          "truncated", "reward", "episode"}
        assert sample["greedy"]["episode"] is None  # single completions; multi-turn runs record the episode
        assert sample["greedy"]["reward"] is None  # judged by comparing answers; a run's evals/ hold rewards
    # the same seed gives the same samples
    again = tmp_path / "again"
    assert main(["eval", *TINY, "--k", "1,2", "--num-examples", "4", "--max-new-tokens", "8", "--out", str(again)]) == 0
    assert _read(again)[1] == samples


def test_existing_outputs_are_never_overwritten_without_the_flag(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    args = ["eval", *TINY, "--num-examples", "2", "--max-new-tokens", "4", "--out", str(out)]
    assert main(args) == 0
    before = (out / "eval.json").read_text()
    (out / "eval.json").write_text(before.replace('"model"', '"model_mark"'))  # a change the refusal must keep
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds eval.json, samples.jsonl; pass --overwrite" in err
    assert '"model_mark"' in (out / "eval.json").read_text()
    assert main([*args, "--overwrite"]) == 0
    assert (out / "eval.json").read_text() == before


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", "0"], "every k must be an integer >= 1"),
    (["--k", "1,x"], "--k must be comma-separated integers"),
    (["--num-examples", "0"], "--num-examples must be >= 1"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--no-greedy", "--k", ""], "every k must be an integer >= 1"),
])
def test_usage_errors_exit_2_in_one_line(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["eval", *TINY, "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("ticgrpo eval: error:")


def test_unknown_dataset_and_bad_columns_through_a_real_subprocess(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": "What is 1 + 1?", "label": "2"}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for data, message in ((f"gsm8k:{wrong}", "has no question column for gsm8k"),
                          ("gsm8kk:x", "unknown dataset 'gsm8kk' (did you mean 'gsm8k'?)")):
        done = subprocess.run([sys.executable, "-m", "ticgrpo.cli", "eval", "--model", "tiny-test", "--data", data,
                               "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()  # nothing written before the data loads


def test_unparsed_gold_answers_are_counted_not_fatal(tmp_path: Path, capsys) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": "What is 2 + 2?", "answer": ""},
        {"prompt": "What is 3 + 3?", "answer": "6"}]))
    out = tmp_path / "eval"
    assert main(["eval", "--model", "tiny-test", "--data", f"jsonl:{data}", "--max-new-tokens", "4", "--out", str(out),
                 "--no-progress", "--chat-template"]) == 0
    captured = capsys.readouterr()
    assert "1 of 3 rows have an answer that cannot be parsed" in captured.err
    report, samples = _read(out)
    assert report["skipped_unparsed_gold"] == 1 and report["skipped_ids"] == ["1"] and len(samples) == 2


def _train_tiny_run(run: Path) -> None:
    """Two steps on a reward that every sample earns differently (the fraction of '7's), so that
    the weights move although the random tiny model never answers right."""
    run.parent.joinpath("sevens.py").write_text(
        "def sevens(prompts, completions, **kwargs):\n"
        "    return [c.count('7') / max(len(c), 1) for c in completions]\n")
    config = run.parent / "config.yaml"
    config.write_text("algorithm:\n  rewards: [{name: 'sevens:sevens', weight: 1.0}]\n")
    code = main(["train", "--config", str(config), "--output-dir", str(run), "--set", "model.name=tiny-test",
                 "--set", "max_steps=2",
                 "--set", "rollout.prompts_per_step=2", "--set", "rollout.num_generations=4",
                 "--set", "rollout.max_new_tokens=8", "--set", "optim.lr=0.01", "--set", "eval.every_steps=0",
                 "--set", "eval.at_start=false", "--set", "eval.num_examples=8", "--set", "eval.ks=[2]",
                 "--set", "checkpoint.every_steps=2",
                 "--set", "logging.progress_bar=false", "--set", "logging.plot=false"])
    assert code == 0


def test_checkpoint_and_final_equal_the_trainers_own_evaluation(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _train_tiny_run(run)
    trained = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()][-1]
    in_training = json.loads((run / "evals" / "step-0002" / "eval.json").read_text())
    trained_samples = [json.loads(line) for line in (run / "evals" / "step-0002" / "samples.jsonl").open()]
    common = ["--data", "arithmetic:level=2", "--num-examples", "8", "--max-new-tokens", "8", "--batch-size", "32",
              "--k", "2", "--no-progress"]
    texts = {}
    for model in (run / "checkpoints" / "step-0002", run / "final", run, "tiny-test"):  # the last: untrained
        out = tmp_path / f"eval-{Path(model).name}"
        assert main(["eval", "--model", str(model), *common, "--out", str(out)]) == 0
        report, samples = _read(out)
        greedy = [s["greedy"] for s in samples]
        # the samples tell weights apart (the tiny model's greedy completions are all newlines)
        texts[Path(model).name] = [c["text"] for s in samples for c in s["samples"]]
        if model == "tiny-test":  # the untrained weights (the run's seed 0): other samples
            break
        assert report["metrics"]["greedy_accuracy"]["value"] == pytest.approx(trained["accuracy"]), model
        # the sampled metrics too: the run's evaluation is seeded with the run's seed (0, --seed's default)
        assert report["metrics"] == in_training["metrics"], model
        assert report["constant_baseline"] == in_training["constant_baseline"]
        assert [[c["text"] for c in s["samples"]] for s in samples] == [
            [c["text"] for c in s["samples"]] for s in trained_samples]
        assert trained["pass@2"] == report["metrics"]["pass@2"]["value"]
        assert sum(g["length"] for g in greedy) / 8 == pytest.approx(trained["completion_length_mean"]), model
        assert sum(g["truncated"] for g in greedy) / 8 == pytest.approx(trained["truncated_frac"]), model
    assert texts["step-0002"] == texts["final"] == texts["run"] != texts["tiny-test"]
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "nowhere"), *common, "--out", str(tmp_path / "e")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_run_saved_by_an_earlier_version_still_evaluates(tmp_path: Path, capsys) -> None:
    """A run folder whose config.yaml has eval.mean_at_k (before eval.ks) is read as such, not refused."""
    import yaml

    run = tmp_path / "run"
    _train_tiny_run(run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("ks", "metrics", "save_samples"):
        del saved["eval"][key]
    saved["eval"]["mean_at_k"] = 0
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run / "final"), "--data", "arithmetic:level=2", "--num-examples", "2",
                 "--max-new-tokens", "4", "--no-progress", "--out", str(out)]) == 0, capsys.readouterr().err
    assert _read(out)[0]["num_problems"] == 2


@pytest.mark.slow
def test_bundled_smollm2_on_a_few_problems_equals_the_trainers_evaluation(tmp_path: Path, capsys) -> None:
    """SmolLM2 answers some of these right, so the comparison with the trainer's held-out
    evaluation of the same weights (a run of 0 steps evaluates the initial model) is not 0 = 0."""
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--set", "max_steps=0", "--set", "rollout.max_new_tokens=32",
                 "--set", "eval.num_examples=4", "--set", "eval.batch_size=32", "--set", "eval.ks=[1,2]",
                 "--set", "checkpoint.save_final=false",
                 "--set", "logging.progress_bar=false", "--set", "logging.plot=false"]) == 0
    trained = json.loads((run / "eval.jsonl").read_text().splitlines()[0])
    out = tmp_path / "eval"
    code = main(["eval", "--model", "smollm2-135m-instruct", "--data", "arithmetic:level=2", "--num-examples", "4",
                 "--k", "1,2", "--out", str(out), "--no-progress", "--max-new-tokens", "32", "--batch-size", "32"])
    assert code == 0
    report, samples = _read(out)
    assert {"greedy_accuracy", "pass@1", "pass@2", "maj@2", "avg@2"} <= set(report["metrics"])
    # the one-shot prompt makes SmolLM2 end with 'Answer: N': most greedy answers are extracted
    assert sum(s["greedy"]["answer"] is not None for s in samples) >= 3
    assert report["metrics"]["greedy_accuracy"]["value"] == pytest.approx(trained["accuracy"])
    assert sum(s["greedy"]["length"] for s in samples) / 4 == pytest.approx(trained["completion_length_mean"])
    # and the sampled metrics, with their intervals: the trainer's evaluation is seeded by the run's seed
    assert report["metrics"] == json.loads((run / "evals" / "step-0000" / "eval.json").read_text())["metrics"]
    assert report["metrics"]["pass@2"]["value"] == trained["pass@2"]
    assert "pass@2" in capsys.readouterr().out
