"""Presets selected by name in a config, and the trainer mechanisms of spec §5 (DAPO overlong
filtering and soft punishment, ESPO early stopping, iGRPO drafts), on the tiny in-process model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from ticgrpo.config import ConfigError, load_config
from ticgrpo.config.algorithms import ALGORITHMS
from ticgrpo.config.schema import method_node
from ticgrpo.core.objectives import OBJECTIVES, make_objective_config
from ticgrpo.rollout.base import RolloutBatch
from ticgrpo.testing import make_tiny_model, make_tiny_tokenizer
from ticgrpo.train import Trainer
from ticgrpo.train.drafts import DEFAULT_TEMPLATE, with_draft
from ticgrpo.train.step import TrainingBatch

TOKENIZER = make_tiny_tokenizer()
ROWS = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j)} for i in range(6) for j in range(6)]


def distinct_chars(prompts, completions, **kwargs):
    """Distinct characters / 12, capped at 1: varies within almost every group (A ≠ 0), in [0, 1]."""
    return [min(len(set(c)) / 12, 1.0) for c in completions]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model is far faster on one thread (and leaves the machine's other cores alone)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tmp_path: Path, algorithm: dict | None = None, **top) -> dict:
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 3,
        "model": {"name": "tiny-test", "chat_template": False},
        "rollout": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 6},
        "algorithm": {"num_iterations": 2, **(algorithm or {})},
        "optim": {"lr": 1e-2},
        "eval": {"at_start": False, "at_end": False, "every_steps": 0},
        "logging": {"progress_bar": False, "plot": False, "samples_per_step": 0},
        "checkpoint": {"save_final": False},
    }
    cfg.update(top)
    return cfg


def make_trainer(cfg: dict, reward=distinct_chars) -> Trainer:
    config_ = load_config(cfg)
    return Trainer(config_, model=make_tiny_model(seed=0, tokenizer=TOKENIZER), tokenizer=TOKENIZER,
                   train_rows=ROWS, eval_rows=[], reward_fns=[(reward, 1.0)])


# ---------------------------------------------------------------- every preset trains


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_each_preset_trains_three_steps(tmp_path, name):
    cfg = config(tmp_path, {"preset": name, "dynamic_sampling_max_rounds": 2})
    trainer = make_trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert result.steps == 3
    lines = (Path(cfg["output_dir"]) / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert all(v == v for v in m.values() if isinstance(v, float)), m  # no NaN
    settings = ALGORITHMS[name].settings
    objective, _ = method_node("objective", settings["objective"])
    advantage, _ = method_node("advantage", settings.get("advantage"))
    assert trainer.config.algorithm.objective.name == objective
    assert trainer.advantage == (advantage or OBJECTIVES.spec(str(objective)).default_advantage)
    if settings.get("dynamic_sampling"):
        assert "sampling_rounds" in metrics[0]
    if settings.get("overlong_reward"):
        assert "reward/overlong_soft_mean" in metrics[0]
    moved = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert moved or name == "gtpo" or all(m["advantage_std"] == 0 for m in metrics), name


def test_presets_compare_and_the_lab_read_every_name_alike(tmp_path):
    """A name is one method everywhere: `algorithm.preset`, `ticgrpo compare` and `ticgrpo lab`
    give it the same objective, validated options and advantage (and the same trainer mechanisms)."""

    from ticgrpo.compare.plan import plan_comparison
    from ticgrpo.config.algorithms import algorithm_names
    from ticgrpo.core.advantages import make_advantage_options
    from ticgrpo.lab.variants import get_variant, lab_algorithms

    runnable = set(lab_algorithms())
    assert {"grpo", "no_is", "tic_grpo", "tic_ratio_only", "bnpo", "rloo"} <= runnable
    for name in algorithm_names():
        preset = load_config({"algorithm": {"preset": name}}).algorithm
        method = (preset.objective.name, preset.objective.options, preset.advantage.name, preset.advantage.options)
        compared = plan_comparison({}, name, "0", tmp_path / name).runs[0].config.algorithm
        assert (compared.objective.name, compared.objective.options, compared.advantage.name,
                compared.advantage.options) == method, name
        assert compared.model_copy(update={"preset": None}) == preset.model_copy(update={"preset": None}), name
        if name in runnable:
            variant = get_variant(name)
            lab = (variant.objective, variant.config(), variant.advantage_name,
                   make_advantage_options(variant.advantage_name, variant.advantage_options))
            assert lab == method, name
        else:
            assert ALGORITHMS[name].trainer_mechanisms() or OBJECTIVES.spec(preset.objective.name).couples_group


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_each_entry_gives_a_finite_loss_and_is_read_only(name):
    from ticgrpo.core.advantages import compute_advantages
    from ticgrpo.core.batch import PolicyBatch
    from ticgrpo.core.objectives import compute_loss

    settings = ALGORITHMS[name].settings
    objective, options = method_node("objective", settings["objective"])
    advantage, advantage_options = method_node("advantage", settings.get("advantage"))
    objective = str(objective)
    g = torch.Generator().manual_seed(0)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(6, 5)
    mask[1, 3:] = 0
    lengths = mask.sum(1).reshape(2, 3)
    adv = compute_advantages(advantage or OBJECTIVES.spec(objective).default_advantage, rewards, lengths,
                             **advantage_options).advantages.flatten().float()
    logprobs = (-torch.rand(6, 5, generator=g)).requires_grad_(True)
    batch = PolicyBatch(logprobs, mask, adv, old_logprobs=logprobs.detach() - 0.1 * torch.rand(6, 5, generator=g),
                        token_ids=torch.randint(0, 7, (6, 5), generator=g), group_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
                        entropies=torch.rand(6, 5, generator=g),
                        hidden_states=(torch.randn(6, 5, 4, generator=g)
                                       if OBJECTIVES.spec(objective).needs_hidden_states else None))
    loss, metrics = compute_loss(objective, batch, make_objective_config(objective, options))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert logprobs.grad is not None and torch.isfinite(logprobs.grad).all()
    with pytest.raises(TypeError):
        settings["objective"] = "grpo"  # type: ignore[index]
    if isinstance(settings["objective"], Mapping):
        with pytest.raises(TypeError):
            settings["objective"]["name"] = "grpo"  # type: ignore[index]  # nested mappings are read-only too


def test_algorithms_table_contents_and_errors():
    from ticgrpo.config.algorithms import Algorithm, algorithm_settings, get_algorithm
    from ticgrpo.registry import UnknownNameError

    presets = {"grpo", "no_is", "tic_grpo", "gspo", "gmpo", "dr_grpo", "dapo", "bnpo", "gtpo", "dppo_tv", "dppo_kl",
               "cispo", "rloo", "nthr", "rt_pg", "trajectory_reuse", "ppo_rpe", "hpo", "copg"}
    ablations = {"tic_ratio_only", "tic_ratio_lenadv", "tic_ratio_clip", "grpo_noclip", "grpo_tokensum",
                 "no_is_tokensum", "no_is_stale", "dapo_loss", "trajectory_reuse_clip", "ppo_rpe_clip_only",
                 "hpo_log", "hpo_sqrt"}
    assert set(ALGORITHMS) == presets | ablations
    assert algorithm_settings("bnpo") == {"objective": {"name": "grpo", "epsilon_low": 0.2, "epsilon_high": 0.28,
                                                        "aggregation": "seq-mean-token-sum"}, "advantage": "beta_norm"}
    assert ALGORITHMS["dapo"].trainer_mechanisms() == ["dynamic_sampling", "overlong_reward"]
    assert not ALGORITHMS["grpo"].trainer_mechanisms()
    assert algorithm_settings("rloo") == {"objective": "grpo", "advantage": "rloo"}
    mine = algorithm_settings("tic_ratio_only")
    mine["objective"]["epsilon_high"] = 0.5  # a caller's copy: the table is untouched
    assert ALGORITHMS["tic_ratio_only"].settings["objective"]["epsilon_high"] is None
    for name, entry in ALGORITHMS.items():
        assert entry.name == name and entry.description, name
        objective, _ = method_node("objective", entry.settings["objective"])
        advantage, _ = method_node("advantage", entry.settings.get("advantage"))
        if name not in ("bnpo", "rloo", "tic_ratio_only", "tic_ratio_clip"):  # those change the advantage
            assert advantage in (None, OBJECTIVES.spec(str(objective)).default_advantage), name
    with pytest.raises(UnknownNameError, match=r"unknown algorithm 'reinforce'; choose one of: .*tic_ratio_only"):
        get_algorithm("reinforce")
    with pytest.raises(UnknownNameError, match=r"did you mean 'tic_ratio_clip'"):
        algorithm_settings("tic_ratio_clp")
    with pytest.raises(ValueError, match="must name an objective"):
        Algorithm("x", "no objective", {"advantage": "rloo"})


# ---------------------------------------------------------------- preset precedence


def test_preset_fills_everything_the_config_leaves_out():
    a = load_config({"algorithm": {"preset": "dapo"}}).algorithm
    assert (a.objective.name, a.advantage.name) == ("dapo", "group_norm")
    assert a.dynamic_sampling and a.overlong_reward and not a.mask_truncated and a.espo_delta is None
    b = load_config({"algorithm": {"preset": "bnpo"}}).algorithm
    assert (b.objective.name, b.advantage.name) == ("grpo", "beta_norm")
    assert (b.objective.options.epsilon_low, b.objective.options.epsilon_high, b.objective.options.aggregation) == (
        0.2, 0.28, "seq-mean-token-sum")
    via_set = load_config({}, overrides=["algorithm.preset=bnpo"]).algorithm
    assert via_set == b


def test_explicit_keys_override_the_preset():
    a = load_config({"algorithm": {"preset": "dapo", "dynamic_sampling": False, "advantage": "rloo",
                                   "espo_delta": 0.25, "mask_truncated": True}}).algorithm
    assert (a.objective.name, a.advantage.name, a.dynamic_sampling, a.overlong_reward) == ("dapo", "rloo", False, True)
    assert a.espo_delta == 0.25 and a.mask_truncated
    # the objective mapping merges with the preset's key by key (the config's keys winning) when it
    # names the same objective or none
    for mine in ({"epsilon_high": 0.3}, {"name": "grpo", "epsilon_high": 0.3}):
        b = load_config({"algorithm": {"preset": "bnpo", "objective": mine}}).algorithm
        assert (b.objective.name, b.objective.options.epsilon_low, b.objective.options.epsilon_high,
                b.objective.options.aggregation) == ("grpo", 0.2, 0.3, "seq-mean-token-sum")
    # another objective: the preset's objective options (grpo's) do not carry over
    c = load_config({"algorithm": {"preset": "bnpo", "objective": "tic_grpo"}}).algorithm
    assert (c.objective.name, c.advantage.name) == ("tic_grpo", "beta_norm")
    assert c.objective.options == make_objective_config("tic_grpo")
    # --set beats the file, and the resolved config reloads to itself
    d = load_config({"algorithm": {"preset": "dapo"}}, overrides=["algorithm.overlong_reward=false"])
    assert not d.algorithm.overlong_reward
    assert load_config(d).algorithm == d.algorithm
    raw = {"algorithm": {"preset": "dapo"}}
    load_config(raw)
    assert raw == {"algorithm": {"preset": "dapo"}}  # the caller's mapping is left alone
    # advantage: null means "the default", which with a preset is the preset's
    assert load_config({"algorithm": {"preset": "bnpo", "advantage": None}}).algorithm.advantage.name == "beta_norm"


def test_preset_given_with_set_replaces_the_files_method(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm:\n  objective: {name: tic_grpo, epsilon_high: 0.1}\n"
                    "  mask_truncated: true\n  num_iterations: 2\n")
    a = load_config(path, overrides=["algorithm.preset=dapo"]).algorithm
    assert (a.objective.name, a.advantage.name) == ("dapo", "group_norm")
    assert a.objective.options == make_objective_config("dapo")
    assert a.dynamic_sampling and not a.mask_truncated and a.num_iterations == 2  # other keys stay
    b = load_config(path, overrides=["algorithm.preset=dapo", "algorithm.dynamic_sampling=false"]).algorithm
    assert b.objective.name == "dapo" and not b.dynamic_sampling  # other --set keys still win
    c = load_config(path, overrides=["algorithm.dynamic_sampling=false", "algorithm.preset=dapo"]).algorithm
    assert not c.dynamic_sampling  # whatever their order
    assert load_config(path).algorithm.objective.name == "tic_grpo"


def test_unknown_preset_is_one_line_listing_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config({"algorithm": {"preset": "dappo"}})
    message = str(info.value)
    assert "\n" not in message and "algorithm.preset" in message and "'dapo'" in message
    assert all(name in message for name in ALGORITHMS)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: {preset: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(cfg), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "gspo" in proc.stderr


# ---------------------------------------------------------------- DAPO overlong


def test_overlong_filter_masks_truncated_completions():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    rollout = RolloutBatch(
        prompt_ids=torch.ones(3, 2, dtype=torch.long), prompt_mask=torch.ones(3, 2, dtype=torch.long),
        completion_ids=torch.ones(3, 4, dtype=torch.long), completion_mask=mask,
        truncated=torch.tensor([True, False, False]), group_ids=torch.zeros(3, dtype=torch.long),
    )
    filtered = TrainingBatch.from_rollout(rollout, torch.ones(3), mask_truncated=True)
    assert filtered.completion_mask.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert TrainingBatch.from_rollout(rollout, torch.ones(3)).completion_mask.tolist() == mask.tolist()


def test_overlong_filter_in_training_gives_no_loss_to_truncated(tmp_path):
    # max_new_tokens 2: the random tiny model (almost) never stops, so every completion is truncated
    cfg = config(tmp_path, {"preset": "grpo", "mask_truncated": True, "num_iterations": 1},
                 max_steps=1, rollout={"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 2})
    trainer = make_trainer(cfg)
    metrics = trainer.train_step()
    assert metrics["truncated_frac"] == 1.0
    assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0


def test_overlong_reward_added_once(tmp_path):
    trainer = make_trainer(config(tmp_path, {"preset": "dapo"}))
    names = [getattr(fn, "__name__", "") for fn, _ in trainer.reward_specs]
    assert names == ["distinct_chars", "overlong_soft"]
    cfg = config(tmp_path, {"preset": "dapo", "rewards": [{"name": "answer_format"}, {"name": "overlong_soft"}]})
    names = [getattr(fn, "__name__", "") for fn, _ in Trainer(load_config(cfg), model=make_tiny_model(
        tokenizer=TOKENIZER), tokenizer=TOKENIZER, train_rows=ROWS, eval_rows=[]).reward_specs]
    assert names == ["answer_format", "overlong_soft"]


# ---------------------------------------------------------------- ESPO


@pytest.mark.parametrize("delta, stops", [(1e-9, True), (1e9, False)])
def test_espo_early_stopping(tmp_path, delta, stops):
    cfg = config(tmp_path, {"preset": "grpo", "num_iterations": 4, "num_minibatches": 2, "espo_delta": delta},
                 optim={"lr": 5e-2, "max_grad_norm": None}, max_steps=2)
    result = make_trainer(cfg).train()
    for m in result.history:
        if stops:  # the first step is at θ_old (ρ ≡ 1); the next minibatch has moved
            assert m["espo_stopped_at"] == 1.0 and m["optimizer_steps"] == 1.0
            assert m["espo_deviation_max"] > delta
        else:
            assert m["espo_stopped_at"] == 8.0 and m["optimizer_steps"] == 8.0


def test_espo_config_is_checked():
    with pytest.raises(ConfigError, match="espo_delta"):
        load_config({"algorithm": {"espo_delta": 0}})


# ---------------------------------------------------------------- iGRPO


def test_with_draft_string_and_chat():
    assert with_draft("Q?", "d1") == DEFAULT_TEMPLATE.format(prompt="Q?", draft="d1")
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "Q?"}]
    out = with_draft(chat, "d1", "{prompt} | {draft}")
    assert out[1]["content"] == "Q? | d1" and chat[1]["content"] == "Q?" and out[0] == chat[0]


def test_igrpo_prompt_contains_the_best_draft(tmp_path):
    cfg = config(tmp_path, {"preset": "grpo", "igrpo": {"num_drafts": 4}, "num_iterations": 1},
                 max_steps=1, logging={"progress_bar": False, "plot": False, "samples_per_step": 8})
    seen: list[tuple[list[str], list[str]]] = []

    def recording(prompts, completions, **kwargs):
        seen.append((list(prompts), list(completions)))
        return distinct_chars(prompts, completions)

    trainer = make_trainer(cfg, reward=recording)
    metrics = trainer.train_step()
    (draft_prompts, drafts), (refined_prompts, _) = seen  # stage one (drafts), stage two (refinements)
    assert len(drafts) == 2 * 4 and len(refined_prompts) == 2 * 4
    scores = distinct_chars(None, drafts)
    for k in range(2):
        group = scores[4 * k : 4 * k + 4]
        best = drafts[4 * k + group.index(max(group))].strip()
        expected = DEFAULT_TEMPLATE.format(prompt=draft_prompts[4 * k], draft=best)
        assert refined_prompts[4 * k : 4 * k + 4] == [expected] * 4
        assert "Here is a draft answer:" in trainer.last_samples[0]["prompt"]
    assert metrics["draft_best_reward_mean"] >= metrics["draft_reward_mean"]
    assert "time_drafts" in metrics


def test_igrpo_config_is_checked():
    with pytest.raises(ConfigError, match=r"algorithm\.igrpo"):
        load_config({"algorithm": {"igrpo": {"num_drafts": 0}}})
    with pytest.raises(ConfigError, match=r"algorithm\.igrpo"):
        load_config({"algorithm": {"igrpo": {"drafts": 2}}})
    with pytest.raises(ConfigError, match=r"algorithm\.igrpo"):
        load_config({"algorithm": {"igrpo": {"template": "no placeholders"}}})


# ---------------------------------------------------------------- lab coverage


def test_lab_all_objectives_covers_every_registered_objective_but_gtpo():
    from ticgrpo.lab.variants import all_objectives, expand_objectives, get_variant

    names = all_objectives()
    group_coupled = {spec.name for spec in OBJECTIVES.specs() if spec.couples_group}  # gtpo, nthr
    assert {get_variant(n).objective for n in names} == set(OBJECTIVES.names()) - group_coupled
    assert expand_objectives(("grpo", "all", "tic_ratio_only")) == (*names, "tic_ratio_only")
    with pytest.raises(ValueError, match="couples"):
        get_variant("gtpo")  # the lab rejects the group-coupled gtpo
