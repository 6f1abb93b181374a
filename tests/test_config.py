"""Config loading, overrides and validation; every kind of error is one line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ticgrpo.cli import main
from ticgrpo.config import ConfigError, TrainConfig, config_to_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    config = load_config({})
    assert isinstance(config, TrainConfig)
    assert config.algorithm.objective.name == "tic_grpo"
    assert config.algorithm.advantage.name == "length_corrected"  # the objective's default advantage
    assert load_config({"algorithm": {"objective": "grpo"}}).algorithm.advantage.name == "group_norm"


def test_overrides_are_yaml_scalars(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 3e-5}, "rollout": {"num_generations": 4}}))
    config = load_config(path, [
        "algorithm.objective=grpo", "optim.lr=1e-5", "rollout.top_k=5", "algorithm.advantage=null",
        "algorithm.objective.epsilon_high=0.28", "model.autocast_bf16=true",
        "algorithm.rewards=[{name: math_correctness, weight: 1.0}, {name: answer_format, weight: 0.1}]",
    ], output_dir=str(tmp_path / "out"))
    assert config.algorithm.objective.name == "grpo" and config.optim.lr == 1e-5
    assert config.rollout.num_generations == 4 and config.rollout.top_k == 5
    assert config.algorithm.objective.options.epsilon_high == 0.28
    assert config.model.autocast_bf16 is True
    assert [r.name for r in config.algorithm.rewards] == ["math_correctness", "answer_format"]
    assert config.output_dir == str(tmp_path / "out")


def test_resolved_config_round_trips(tmp_path):
    config = load_config({"algorithm": {"objective": {"name": "no_is", "mode": "stale"},
                                        "advantage": {"name": "group_norm", "delta": 0.01}}})
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config


@pytest.mark.parametrize("name", ["quickstart.yaml", "tiny.yaml"])
def test_shipped_configs_are_valid(name):
    path = ROOT / "configs" / name
    if not path.is_file():
        pytest.skip(f"{name} not present")
    load_config(path)


# (overrides, fragment of the one-line message)
ERRORS = [
    (["modle.name=x"], "did you mean 'model'"),
    (["rollout.num_generation=4"], "did you mean 'rollout.num_generations'"),
    (["rollout.num_generations=abc"], "rollout.num_generations must be an integer"),
    (["optim.lr=fast"], "optim.lr must be a number"),
    (["model.autocast_bf16=3"], "model.autocast_bf16 must be true or false"),
    (["rollout=5"], "rollout must be a mapping"),
    (["rollout.num_generations=1"], "num_generations (G) must be >= 2"),
    (["rollout.prompts_per_step=3", "rollout.num_generations=2", "algorithm.num_minibatches=4"],
     "num_minibatches=4 must divide prompts_per_step*num_generations=6"),
    (["algorithm.micro_batch_size=5"], "micro_batch_size=5 must divide the minibatch size 32"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens must be >= 1"),
    (["rollout.temperature=0"], "rollout.temperature must be > 0"),
    (["algorithm.num_iterations=0"], "num_iterations (μ) must be >= 1"),
    (["algorithm.objective=tic-grpo"], "unknown value 'tic-grpo' (did you mean 'tic_grpo'?); choose one of:"),
    (["algorithm.advantage=group"], "algorithm.advantage: unknown value 'group'"),
    (["algorithm.objective=grpo", "algorithm.objective.aggregation=mean"], "grpo.aggregation must be one of:"),
    (["algorithm.objective.epsilon=0.1"], "unknown option 'epsilon' for objective 'tic_grpo'"),
    (["algorithm.objective.beta=-0.1"], "beta must be >= 0"),
    (["algorithm.objective={name: tic_grpo, beta: 0.1, kl_estimator: k9}"], "k9"),
    (["algorithm.objective={name: no_is, mode: lazy}"], "no_is.mode must be one of: frozen, stale; got str 'lazy'"),
    (["algorithm.objective={epsilon_high: 0.3, name: 3}"], "algorithm.objective.name must be a string"),
    (["algorithm.objective=[grpo]"], "algorithm.objective must be a name or a mapping"),
    (["algorithm.advantage.delta=x"], "algorithm.advantage: length_corrected.delta must be a number"),
    (["algorithm.advantage=rloo", "algorithm.advantage.delta=0.1"], "unknown option 'delta' for advantage 'rloo'"),
    (["algorithm.objective_options={epsilon_high: 0.3}"],
     "algorithm.objective_options was replaced by algorithm.objective: write algorithm.objective: "
     "{epsilon_high: 0.3} (the options nest under the method)"),
    (["algorithm.objective=grpo", "algorithm.objective_options={epsilon_high: 0.3}"],
     "write algorithm.objective: {name: grpo, epsilon_high: 0.3}"),
    (["eval.mean_at_k=0"], "eval.mean_at_k was replaced by eval.ks: write eval.ks: []"),
    (["algorithm.advantage=beta_norm", "algorithm.advantage_options={delta: 0.1}"],
     "write algorithm.advantage: {name: beta_norm, delta: 0.1}"),
    (["algorithm.rewards=[{name: correctness}]"], "algorithm.rewards[0].name: unknown value 'correctness'"),
    (["optim.schedule=exp"], "choose one of: constant, cosine, linear"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["model.dtype=fp8"], "model.dtype: unknown value 'fp8'"),
    (["data.train={task: arithmetic, jsonl: x.jsonl}"], "data.train must name exactly one source"),
    (["eval.reward=nope"], "eval.reward: unknown value 'nope'"),
    (["eval.mean_at_k=8"], "eval.mean_at_k was replaced by eval.ks: write eval.ks: [8] (avg@k is mean@k"),
    (["eval.metrics=[pass@k, maj@8]"], "eval.metrics: unknown value 'maj@8' (did you mean 'maj@k'?)"),
    (["eval.ks=[0, 8]"], "eval.ks[0] must be >= 1, got 0"),
    (["nonsense"], "must look like key.path=value"),
    (["optim.lr=.inf"], "optim.lr must be a finite number, got inf"),
    (["optim.lr=inf"], "optim.lr must be a finite number, got inf"),
    (["optim.eps=.nan"], "optim.eps must be a finite number, got nan"),
    (["optim.beta2=-.inf"], "optim.beta2 must be a finite number"),
    (["optim.weight_decay=1e400"], "optim.weight_decay must be a finite number"),
    (["optim.max_grad_norm=.inf"], "optim.max_grad_norm must be a finite number"),
    (["rollout.temperature=.inf"], "rollout.temperature must be a finite number"),
    (["eval.temperature=.nan"], "eval.temperature must be a finite number"),
    (["rollout.lag=1", "algorithm.offpolicy_correction={name: token_tis, cap: .inf}"],
     "algorithm.offpolicy_correction.cap must be a finite number"),
    (["algorithm.rewards=[{name: math_correctness, weight: .inf}]"], "algorithm.rewards[0].weight must be a finite"),
    (["algorithm.objective.epsilon_high=.inf"], "algorithm.objective.epsilon_high must be a finite"),
    # the schema's own messages, down into the mappings passed on as keyword arguments
    (["algorithm.objectve=grpo"], "unknown key 'algorithm.objectve'; did you mean 'algorithm.objective'? (allowed:"),
    (["model.lora={r: 4, lora_alph: 8}"], "unknown key 'model.lora.lora_alph'; did you mean 'model.lora.lora_alpha'?"),
    (["model.lora={r: 0}"], "model.lora.r must be >= 1, got 0"),
    (["rollout.vllm={mode: srv}"], "rollout.vllm.mode: unknown value 'srv' (did you mean 'server'?)"),
    (["algorithm.igrpo={num_drafts: 0}"], "algorithm.igrpo.num_drafts must be >= 1, got 0"),
    (["algorithm.igrpo={template: x}"], "algorithm.igrpo.template must contain {prompt} and {draft}"),
    (["data.train={hf: x, splt: a}"], "unknown key 'data.train.splt'; did you mean 'data.train.split'?"),
    (["data.eval={task: arithmetic, level: 0}"], "data.eval.level must be >= 1, got 0"),
    (["optim.lr=true"], "optim.lr must be a number, got bool True"),
    (["rollout.top_k=3.5"], "rollout.top_k must be an integer, got float 3.5"),
    (["threads=0"], "threads must be a positive integer or 'auto', got 0"),
    (["algorithm.rewards=[]"], "algorithm.rewards must not be empty"),
    (["rollout.top_p=1.5"], "rollout.top_p must be <= 1, got 1.5"),
    (["algorithm.advantage.delta=.nan"], "algorithm.advantage.delta must be a finite"),
]


@pytest.mark.parametrize(("overrides", "fragment"), ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_config_errors_exit_2_with_one_line(overrides, fragment, capsys):
    argv = ["train", "--dry-run"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert fragment in err, err
    with pytest.raises(ConfigError):
        load_config({}, overrides)


def test_missing_and_malformed_config_files(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and err.count("\n") == 1
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert main(["train", "--config", str(listed)]) == 2
    assert "top level must be a mapping" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "--dry-run", "--set", "algorithm.objective=grpo"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["algorithm"]["objective"]["name"] == "grpo"


QUICKSTART = ROOT / "configs" / "quickstart.yaml"  # objective {name: tic_grpo, epsilon_high: 0.2}


@pytest.mark.parametrize(("objective", "defaults"), [("gmpo", {"epsilon": 0.4}), ("cispo", {"epsilon_high": 0.28})])
def test_objective_override_replaces_the_files_options(objective, defaults):
    config = load_config(QUICKSTART, [f"algorithm.objective={objective}"])
    options = config.algorithm.objective.options  # tic_grpo's epsilon_high does not follow
    assert {k: getattr(options, k) for k in defaults} == defaults


def test_option_overrides_nest_under_the_objective(capsys):
    config = load_config(QUICKSTART, ["algorithm.objective=cispo", "algorithm.objective.epsilon_high=0.5"])
    assert (config.algorithm.objective.name, config.algorithm.objective.options.epsilon_high) == ("cispo", 0.5)
    # replacing the node drops what was set on it before, on the command line too
    config = load_config(QUICKSTART, ["algorithm.objective.epsilon_low=0.1", "algorithm.objective=cispo"])
    assert config.algorithm.objective.options.epsilon_low is None
    # an option set on an objective named by a string: the string becomes {name: ...}
    config = load_config({"algorithm": {"objective": "grpo"}}, ["algorithm.objective.epsilon_high=0.3"])
    assert (config.algorithm.objective.name, config.algorithm.objective.options.epsilon_high) == ("grpo", 0.3)
    assert main(["train", "--config", str(QUICKSTART), "--dry-run", "--set", "algorithm.objective=gmpo"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["algorithm"]["objective"]
    assert printed["name"] == "gmpo" and "epsilon_high" not in printed


def test_advantage_override_replaces_the_files_advantage_options():
    raw = {"algorithm": {"advantage": {"name": "length_corrected", "delta": 0.1}}}
    assert load_config(raw, ["algorithm.advantage=rloo"]).algorithm.advantage.options == {}
    assert raw["algorithm"]["advantage"] == {"name": "length_corrected", "delta": 0.1}  # the caller's mapping
    config = load_config(raw, ["algorithm.advantage.delta=0.2"])
    assert (config.algorithm.advantage.name, config.algorithm.advantage.options) == ("length_corrected", {"delta": 0.2})
    assert raw["algorithm"]["advantage"]["delta"] == 0.1  # is left alone


def test_null_advantage_follows_the_objective_through_a_written_config():
    written = load_config({"algorithm": {"objective": "tic_grpo"}})
    assert written.to_dict()["algorithm"]["advantage"] is None
    assert load_config(written, ["algorithm.objective=grpo"]).algorithm.advantage.name == "group_norm"


def test_yaml_forms_that_mean_a_default_or_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\noptim:\n  lr: 1e-5\n")  # an empty section; YAML 1.1 reads 1e-5 as a string
    config = load_config(path)
    assert config.rollout == load_config({}).rollout and config.optim.lr == 1e-5
    assert load_config({}, ["model.lora={r: 4}"]).model.lora == {"r": 4}  # the mapping as written


def test_lora_takes_every_peft_argument_and_refuses_others():
    """model.lora types the common peft.LoraConfig arguments; any other argument peft takes
    passes through, and a key peft does not take is one line."""
    from ticgrpo.integrations.lora import lora_config

    config = load_config("configs/tiny.yaml", ["model.lora={r: 4, exclude_modules: [lm_head], alpha_pattern: {}}"])
    assert config.model.lora == {"r": 4, "exclude_modules": ["lm_head"], "alpha_pattern": {}}
    peft_config = lora_config(config.model.lora)
    assert peft_config.r == 4 and set(peft_config.exclude_modules) == {"lm_head"}
    assert peft_config.target_modules == "all-linear" and peft_config.task_type == "CAUSAL_LM"
    with pytest.raises(ConfigError, match=r"^unknown key 'model\.lora\.rank' \(not a peft\.LoraConfig argument\)$"):
        load_config("configs/tiny.yaml", ["model.lora={rank: 4}"])
    with pytest.raises(ConfigError, match=r"did you mean 'model\.lora\.lora_dropout'"):
        load_config("configs/tiny.yaml", ["model.lora={lora_dropuot: 0.1}"])


# One old section per migration: a new MIGRATIONS entry without one fails the first test below.
OLD_SECTIONS = {
    ("objective_options",): {"objective": "grpo", "objective_options": {"epsilon_high": 0.3}},
    ("advantage_options",): {"advantage": "beta_norm", "advantage_options": {"reward_min": -1.0}},
    ("behavior_correction", "behavior_correction_cap"): {"behavior_correction": "token",
                                                         "behavior_correction_cap": 3.0},
    ("mean_at_k",): {"mean_at_k": 4},
}


def test_every_migration_has_an_old_section():
    from ticgrpo.config.migrations import MIGRATIONS

    assert sorted(m.removed for m in MIGRATIONS) == sorted(OLD_SECTIONS)


@pytest.mark.parametrize("removed", sorted(OLD_SECTIONS))
def test_a_migration_upgrades_a_saved_config_and_its_error_spells_the_upgrade(removed):
    """The saved form loads as its upgrade; the same keys in a new config are one line whose
    `write <key>: <value>` loads to that same config."""
    from ticgrpo.config.migrations import MIGRATIONS, upgrade_saved_config

    migration = next(m for m in MIGRATIONS if m.removed == removed)
    if migration.section == "algorithm" and "behavior_correction" in removed:
        base = {"model": {"name": "tiny-test"}, "rollout": {"lag": 1}}  # a correction needs something to correct
    else:
        base = {"model": {"name": "tiny-test"}}
    old = {**base, migration.section: dict(OLD_SECTIONS[removed])}
    upgraded = load_config(upgrade_saved_config(old))
    with pytest.raises(ConfigError) as info:
        load_config(old)
    message = str(info.value)
    assert "\n" not in message and all(f"{migration.section}.{key}" in message for key in removed)
    spelled = message.split(": write ", 1)[1].rsplit(" (", 1)[0]
    key, _, value = spelled.partition(": ")
    rest = {k: v for k, v in OLD_SECTIONS[removed].items() if k not in removed and k != migration.replacement}
    rewritten = load_config({**base, migration.section: rest}, [f"{key}={value}"])
    assert rewritten.to_dict() == upgraded.to_dict()
