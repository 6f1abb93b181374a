"""The training loop: rollout → rewards → advantages → optimisation step → logs/eval/checkpoints.

    result = train("configs/quickstart.yaml")            # or a dict / TrainConfig

`Trainer` only orchestrates; each stage lives in its own module:

    prompts          ticgrpo.train.prompts        the seeded prompt stream, the prompt text
    sampling         ticgrpo.train.sampling       plain / dynamic sampling, iGRPO drafts (train.drafts)
    batch sources    ticgrpo.train.sources        which policy version samples each step's batch
    rewards          ticgrpo.rewards.scoring      scores and reward failures, as one value
    advantages       ticgrpo.core.advantages
    π_old            ticgrpo.train.offpolicy      the log-probs of the ratio, off-policy corrections
    optimisation     ticgrpo.train.inner_loop     standard / frozen / ESPO inner loops over train.step
    metrics          ticgrpo.train.metrics        every logged name with its reduction
    outputs          ticgrpo.train.logging, ticgrpo.train.checkpoint, ticgrpo.train.run_folder
    the parts        ticgrpo.train.components     built from the config
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ticgrpo.config import TrainConfig, config_to_yaml, load_config
from ticgrpo.core.advantages import AdvantageResult, compute_advantages
from ticgrpo.eval.runner import summarize
from ticgrpo.rewards.scoring import ScoredRollout
from ticgrpo.train import checkpoint as ckpt
from ticgrpo.train import run_folder
from ticgrpo.train.components import (
    adamw,
    describe_values,
    episode_engine,
    reference_policy,
    rollout_engine,
    scorers,
    step_settings,
    training_rewards,
)
from ticgrpo.train.distributed import join_training_job
from ticgrpo.train.evaluate import ScorerJudge, eval_log_record, eval_settings, evaluate
from ticgrpo.train.inner_loop import optimize
from ticgrpo.train.logging import NullLogger, RunLogger, samples, step_metrics
from ticgrpo.train.offpolicy import prepare_old_logprobs
from ticgrpo.train.prompts import PromptFormatter, PromptStream, load_rows
from ticgrpo.train.sampling import Collected, NonFiniteProbabilities, sampling_strategy
from ticgrpo.train.setup import (
    configure_cpu_threads,
    disable_dropout,
    load_model,
    make_lr_scheduler,
    seed_everything,
)
from ticgrpo.train.sources import batch_source, staleness_metrics
from ticgrpo.train.step import TrainingBatch, fixed_logprobs

logger = logging.getLogger(__name__)


class TrainingHalted(RuntimeError):
    """The run stopped itself (e.g. too many non-finite steps in a row); `ticgrpo` exits with 3."""

    exit_code = 3


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_dir: Path | None
    history: list[dict] = field(default_factory=list)  # metrics of the steps run in this call
    evals: list[dict] = field(default_factory=list)
    rank: int = 0  # this process's rank (0 in a single-process run; only rank 0 writes files)
    already_finished: bool = False  # a resume of a run that had finished: nothing was run or written


class Trainer:
    """One training run. `model`/`tokenizer`, `train_rows`/`eval_rows` and `reward_fns`
    (a list of (callable or name, weight)) may be passed in to bypass loading from the config."""

    def __init__(
        self,
        config: TrainConfig | dict | str | Path,
        *,
        model: Any = None,
        tokenizer: Any = None,
        train_rows: list[dict] | None = None,
        eval_rows: list[dict] | None = None,
        reward_fns: list[tuple[Any, float]] | None = None,
        config_dir: str | Path | None = None,
    ) -> None:
        if config_dir is None and isinstance(config, (str, Path)):
            config_dir = Path(config).parent  # 'module:function' rewards are looked up beside the config
        self.config = config if isinstance(config, TrainConfig) else load_config(config)
        cfg = self.config
        seed_everything(cfg.seed)
        self.output_dir = Path(cfg.output_dir)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        self.dist, self.device = join_training_job(self.device, cfg.rollout.prompts_per_step)
        if self.device.type == "cpu":
            configure_cpu_threads(cfg.threads)
        self.autocast_dtype = torch.bfloat16 if cfg.model.autocast_bf16 else None
        self.reward_specs = training_rewards(cfg, reward_fns, config_dir)
        self.scorer, self.eval_scorer = scorers(cfg, self.reward_specs, config_dir)
        self.objective_config = cfg.algorithm.objective.options
        self.advantage = cfg.algorithm.advantage.name
        self.train_rows = train_rows if train_rows is not None else load_rows(cfg.data.train)
        self.eval_rows = eval_rows if eval_rows is not None else load_rows(cfg.data.eval)
        if cfg.eval.num_examples is not None:
            self.eval_rows = self.eval_rows[: cfg.eval.num_examples]
        self.stream = PromptStream(self.train_rows, cfg.seed, cfg.data.shuffle)
        if model is None:
            model, tokenizer = load_model(cfg)
        self.model, self.tokenizer = model.to(self.device), tokenizer
        disable_dropout(self.model)
        self.ref_model, self.ref_context = reference_policy(self.model, self.objective_config)
        self.engine = episode_engine(
            cfg, rollout_engine(cfg, self.model, self.tokenizer, self.autocast_dtype, self.dist.rank), self.tokenizer,
            config_dir)
        self.format_prompt = PromptFormatter(self.tokenizer, cfg.model.chat_template, cfg.model.system_prompt)
        sampling = sampling_strategy(cfg, self.engine, self.scorer, self.format_prompt, self.dist)
        self.settings = step_settings(cfg, self.autocast_dtype)
        self.source = batch_source(cfg, sampling, self.engine, self.model, self.settings)
        self.optimizer = adamw(self.model, cfg)
        self.scheduler = make_lr_scheduler(self.optimizer, cfg)
        self.step = 0
        self.nonfinite_streak = 0  # consecutive training steps with a skipped non-finite optimizer step
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.last_samples: list[dict] = []
        self.logger: RunLogger | NullLogger = NullLogger()  # train() opens the run's logs

    # ------------------------------------------------------------------ the loop

    def train(self, resume: bool = False, overwrite: bool = False,
              allow_config_change: bool = False) -> TrainResult:
        """Train to max_steps in the run folder: a fresh start (`overwrite` replaces an earlier run
        there), or with `resume` a continuation from its latest checkpoint (`allow_config_change`
        lets the new config differ in keys that change the trajectory). See ticgrpo.train.run_folder."""
        cfg, main = self.config, self.dist.is_main
        lock, plan = self._claim_folder(resume, overwrite, allow_config_change)
        sandbox_mark: int | None = None  # None: a finished run's folder, left alone (nothing is written to it)
        try:
            if plan.finished is not None and int(plan.finished["step"]) >= cfg.max_steps:
                return self._already_finished(plan.finished)
            sandbox_mark = self._sandbox_clock()
            log_lines = self._resume(plan) if resume else None
            if main:
                self._prepare_folder(plan)
            self.logger = RunLogger(
                self.output_dir, cfg.max_steps, self.step, cfg.logging.progress_bar, cfg.logging.tensorboard,
                cfg.logging.wandb, cfg.logging.wandb_project, cfg.to_dict(),
            ) if main else NullLogger()
            if resume and log_lines is None:  # a checkpoint written before line counts were recorded
                self.logger.truncate_after(self.step)
            elif log_lines is not None:
                self.logger.truncate_to(log_lines)
            if self.step == 0 and cfg.eval.at_start:
                self.run_eval()
            while self.step < cfg.max_steps:
                metrics = self.train_step()
                self.logger.log_step(self.step, metrics)
                self.logger.log_samples(self.step, self.last_samples)
                self.history.append({"step": self.step, **metrics})
                self._check_nonfinite(metrics)
                if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and self.step < cfg.max_steps:
                    self.run_eval()
                every = cfg.checkpoint.every_steps
                if every and (self.step % every == 0 or self.step == cfg.max_steps):
                    self.save_checkpoint()
            final_dir = self._finish()
        finally:
            if sandbox_mark is not None:
                self._record_sandbox(sandbox_mark)
            self.logger.close()
            self.source.close()
            self.engine.close()
            self.dist.close()
            if lock is not None:
                lock.release()
        if cfg.logging.plot and main:
            from ticgrpo.reports.plots import plot_curves

            plot_curves(self.output_dir)
        return TrainResult(self.output_dir, self.step, final_dir, self.history, self.evals, self.dist.rank)

    def train_step(self) -> dict[str, float]:
        """One rollout batch → μ·M optimizer steps. Returns the step's metrics."""
        cfg, a = self.config, self.config.algorithm
        start = time.perf_counter()
        collected = self._collect()
        ckpt.crash_point("after_rollout")  # test hook; a no-op normally
        scored, times = collected.batch, collected.times
        rollout = scored.rollout
        staleness = staleness_metrics(rollout.policy_version, self.step)  # the source tagged every row
        lengths = rollout.completion_lengths.float().cpu()
        adv = self.advantages(scored.group_rewards(), lengths.view(-1, cfg.rollout.num_generations))
        batch = TrainingBatch.from_rollout(rollout, adv.advantages.flatten(), a.mask_truncated)
        t0 = time.perf_counter()
        offpolicy = prepare_old_logprobs(self.model, batch, rollout, self.settings, a, self.step)
        if self.ref_model is not None:
            batch.ref_logprobs = fixed_logprobs(self.ref_model, batch, self.settings, self.ref_context)
        times["old_logprobs"] = time.perf_counter() - t0
        lr = float(self.scheduler.get_last_lr()[0])
        stats = optimize(self.model, self.optimizer, batch, self.settings, self.dist)
        self._check_weights(lr)
        self.source.after_update(self.model, self.step + 1)  # e.g. an inference engine gets the new θ
        ckpt.crash_point("after_optimizer_step")  # test hook; a no-op normally
        if stats.metrics.get("skipped_nonfinite"):
            self._warn_nonfinite(stats.metrics, scored, adv, batch)
        self.scheduler.step()
        self.step += 1
        times.update(stats.times)
        times["train"] = stats.times["forward_backward"] + stats.times["optimizer"]
        times["step"] = time.perf_counter() - start
        passes = 1 if self.settings.frozen else self.settings.optimizer_steps // a.num_minibatches
        metrics = {
            **step_metrics(scored, adv, lengths),
            **stats.metrics,
            **staleness,
            **collected.metrics,
            **offpolicy,
            "lr": lr,
            "reward_errors": float(len(collected.errors)),
            "rollout_tokens_per_s": float(lengths.sum()) / max(times["rollout"], 1e-9),
            "train_tokens_per_s": float(batch.attention_mask.sum()) * passes / max(times["train"], 1e-9),
            **{f"time_{k}": v for k, v in times.items()},
        }
        self.last_samples = samples(scored, cfg.logging.samples_per_step)
        return self.dist.reduce_metrics(metrics)

    def _collect(self) -> Collected:
        """This step's scored groups from the batch source (ticgrpo.train.sources), sampled by the
        configured strategy (ticgrpo.train.sampling)."""
        try:
            return self.source.next_batch(self.stream, self.step)
        except NonFiniteProbabilities:
            last = ckpt.latest_checkpoint(self.output_dir, quiet=True)
            raise TrainingHalted(
                f"stopped at step {self.step + 1}: sampling met NaN/inf token probabilities (the weights are "
                f"finite but diverged: lower optim.lr); the last checkpoint with finite weights is "
                f"{last or 'none'}"
            ) from None

    def advantages(self, rewards: torch.Tensor, lengths: torch.Tensor) -> AdvantageResult:
        """Advantages of this process's groups ([groups, G] rewards and lengths), computed on the
        gathered groups of every process so that batch-level statistics see the whole batch."""
        options: dict[str, Any] = dict(self.config.algorithm.advantage.options)
        if not self.dist.enabled:
            return compute_advantages(self.advantage, rewards, lengths, **options)
        parts = self.dist.all_gather((rewards.cpu(), lengths.cpu()))
        everyone = compute_advantages(self.advantage, torch.cat([r for r, _ in parts]),
                                      torch.cat([n for _, n in parts]), **options)
        start = sum(len(r) for r, _ in parts[: self.dist.rank])
        return replace(everyone, advantages=everyone.advantages[start : start + len(rewards)])

    def run_eval(self) -> dict[str, float]:
        """Evaluates the held-out rows (each process its share; every process then summarises
        all of them), logs eval.jsonl and evals/step-N/, and returns the eval.jsonl record."""
        if not self.eval_rows:
            return {}
        rows = self.dist.uneven_share(self.eval_rows)
        self.source.prepare_eval(self.model, self.step)
        settings = eval_settings(self.config, self.eval_scorer.max_new_tokens)
        judge = ScorerJudge(self.eval_scorer, self.config.eval.correct_threshold)
        mine = evaluate(self.engine, rows, [self.format_prompt(row) for row in rows], judge, settings)
        records = [record for share in self.dist.all_gather(mine) for record in share]  # in row order
        summary = summarize(records, settings)
        result = eval_log_record(records, summary, settings, self.config.eval.metrics)
        self.logger.log_eval(self.step, result, summary, records if self.config.eval.save_samples else None)
        self.evals.append({"step": self.step, **result})
        return result

    def _warn_nonfinite(self, metrics: dict, scored: ScoredRollout, adv: Any, batch: TrainingBatch) -> None:
        """One warning line with the statistics of a batch whose loss or gradient was non-finite."""
        with torch.no_grad():
            logp = fixed_logprobs(self.model, batch, self.settings)[batch.completion_mask.bool()].float().cpu()

        logger.warning(f"step {self.step + 1}: non-finite loss or gradient, skipped "
                       f"{int(metrics['skipped_nonfinite'])} optimizer step(s) (grads zeroed); rewards: "
                       f"{describe_values(scored.rewards)}; advantages: {describe_values(adv.advantages)}; "
                       f"log-probs: {describe_values(logp)}")

    def _check_nonfinite(self, metrics: dict) -> None:
        limit = self.config.optim.max_consecutive_nonfinite
        self.nonfinite_streak = self.nonfinite_streak + 1 if metrics.get("skipped_nonfinite") else 0
        if self.nonfinite_streak >= limit:
            raise TrainingHalted(
                f"stopped at step {self.step}: {self.nonfinite_streak} consecutive steps had a non-finite loss or "
                f"gradient (optim.max_consecutive_nonfinite={limit}); the last checkpoint with finite weights is "
                f"{ckpt.latest_checkpoint(self.output_dir, quiet=True) or 'none'}"
            )

    def _check_weights(self, lr: float) -> None:
        """Halt when the optimizer step made a weight NaN/inf (its loss and gradient were finite,
        or it would have been skipped): continuing or saving would only spread the damage."""
        bad = ckpt.nonfinite_weights(self.model)  # one pass over the trainable parameters
        if bad:
            total = sum(p.numel() for p in ckpt.trainable_parameters(self.model))
            last = ckpt.latest_checkpoint(self.output_dir, quiet=True)
            raise TrainingHalted(
                f"stopped at step {self.step + 1}: the optimizer step made {bad} of {total} trainable weights NaN or "
                f"inf from a finite loss and gradient (lr {lr:g}: lower optim.lr); nothing of this step was saved; "
                f"the last checkpoint with finite weights is {last or 'none'}"
            )

    def save_checkpoint(self) -> Path | None:
        """Process 0 writes (the replicas are equal); the others wait for it."""
        path = None
        sources = self.dist.all_gather(self.source.state())  # each process's own queued batches, if any
        if self.dist.is_main:
            state = {"stream": self.source.stream_state(self.stream), "evals": self.evals,
                     "log_lines": self.logger.sync()}
            path = ckpt.save_checkpoint(self.output_dir, self.step, self.model, self.optimizer, self.scheduler,
                                        state, self.config.checkpoint.keep_last, sources)
        self.dist.barrier()
        return path

    def _claim_folder(self, resume: bool, overwrite: bool,
                      allow_config_change: bool) -> tuple[run_folder.RunFolderLock | None, run_folder.ResumePlan]:
        """Process 0 checks the run folder, takes its lock and checks again under it; every process
        follows its verdict (the others never read a folder that process 0 may be writing)."""
        lock = None
        verdict: run_folder.ResumePlan | run_folder.RunFolderError | None = None
        if self.dist.is_main:
            try:
                run_folder.check_start(self.output_dir, self.config, resume, overwrite, allow_config_change)
                lock = run_folder.RunFolderLock(self.output_dir).acquire()
                verdict = run_folder.check_start(self.output_dir, self.config, resume, overwrite, allow_config_change)
            except run_folder.RunFolderError as exc:
                verdict = exc
        verdict = self.dist.all_gather(verdict)[0]
        if isinstance(verdict, run_folder.RunFolderError):
            if lock is not None:
                lock.release()
            raise verdict
        return lock, verdict

    def _resume(self, plan: run_folder.ResumePlan) -> dict[str, int] | None:
        """Restore the latest checkpoint; returns the line count of each log when it was saved."""
        cfg = self.config
        path = ckpt.latest_checkpoint(self.output_dir)
        if path is None:
            raise run_folder.RunFolderError(
                f"--resume: no checkpoint under {ckpt.checkpoint_root(self.output_dir)} (the run stopped before "
                f"its first checkpoint, or checkpoint.every_steps is 0); start it again with --overwrite")
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.scheduler, verify=False)  # verified
        self.step = int(state["step"])
        if self.step > cfg.max_steps:
            raise run_folder.RunFolderError(f"--resume: max_steps={cfg.max_steps} is below the step of the latest "
                                            f"checkpoint ({path}); resume with max_steps >= {self.step}")
        self.stream.load_state(state["stream"])
        self.evals = list(state.get("evals", []))
        log_lines = state.get("log_lines")
        finished = plan.finished
        if finished is not None and int(finished["step"]) == self.step:
            # a finished run extended to more steps keeps its logs whole, final evaluation included
            self.evals, log_lines = list(finished["evals"]), dict(finished["log_lines"])
        self._apply_optim_config()
        self.source.load_state(self._source_state(state.get("source"), path), self.model)
        if self.dist.is_main:
            print(f"resuming {self.output_dir} from step {self.step} ({path.name}); training to step "
                  f"{cfg.max_steps}", flush=True)
        return log_lines

    def _source_state(self, saved: list[dict[str, Any]] | None, path: Path) -> dict[str, Any]:
        """This process's batch-source state from a checkpoint (none: it held no queued batches)."""
        if not saved:
            return {}
        if len(saved) != self.dist.world_size:
            raise run_folder.RunFolderError(
                f"--resume: {path} holds the queued batches of {len(saved)} process(es) (rollout.lag), this job has "
                f"{self.dist.world_size}: resume with {len(saved)} process(es)")
        return saved[self.dist.rank]

    def _apply_optim_config(self) -> None:
        """After a resume: the optimizer state came from the checkpoint; its hyper-parameters and the
        LR schedule come from the config (the same values unless --allow-config-change let optim.* or
        max_steps change). The schedule's position follows the step (make_lr_scheduler: step + 1),
        whatever convention the checkpoint's scheduler state was saved with."""
        o = self.config.optim
        self.scheduler.last_epoch = self.step + 1
        self.scheduler.base_lrs = [o.lr for _ in self.optimizer.param_groups]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(lr=o.lr * factor, initial_lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                         weight_decay=o.weight_decay)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _prepare_folder(self, plan: run_folder.ResumePlan) -> None:
        """Process 0, once the run has loaded everything and holds the folder: replace an earlier run
        (`overwrite`), record config changes of a resume, then write config.yaml."""
        if plan.overwrite:
            run_folder.clear_outputs(self.output_dir)
        if plan.changes:
            run_folder.record_config_changes(self.output_dir, self.step, plan.changes)
        (self.output_dir / "config.yaml").write_text(config_to_yaml(self.config))

    def _finish(self) -> Path | None:
        """The run is finished once its last evaluation and final save are done: finished.json says
        so. Returns the final model's folder (None without checkpoint.save_final)."""
        if self.config.eval.at_end and (not self.evals or self.evals[-1]["step"] != self.step):
            self.run_eval()
            ckpt.crash_point("after_final_eval")  # test hook; a no-op normally
        final_dir = self.save_final() if self.config.checkpoint.save_final else None
        ckpt.crash_point("before_finished")  # test hook; a no-op normally
        self._record_finished(final_dir)
        return final_dir

    def _record_finished(self, final_dir: Path | None) -> None:
        if self.dist.is_main:
            run_folder.write_finished(self.output_dir, {
                "step": self.step, "final_dir": str(final_dir) if final_dir else None, "evals": self.evals,
                "log_lines": self.logger.sync(),
            })
        self.dist.barrier()

    @staticmethod
    def _sandbox_clock() -> int:
        sandbox = sys.modules.get("ticgrpo.rewards.sandbox")  # imported only by what executes code
        return sandbox.usage_mark() if sandbox is not None else 0

    def _record_sandbox(self, since: int) -> None:
        """sandbox.json: the isolation level the code rewards and tools of this run actually ran at
        (the sandboxes used since the execution clock read `since`), their limits and the outcome
        counts of this process's programs (the last session's, after a resume)."""
        sandbox = sys.modules.get("ticgrpo.rewards.sandbox")
        summaries = sandbox.sandbox_summary(since) if sandbox is not None else []
        if summaries and self.dist.is_main and self.output_dir.is_dir():
            run_folder.write_json_atomically(self.output_dir / run_folder.SANDBOX_FILE, summaries)

    def _already_finished(self, finished: dict) -> TrainResult:
        step = int(finished["step"])
        if self.dist.is_main:
            print(f"{self.output_dir}: the run already finished at step {step}; nothing to do (raise max_steps "
                  f"to train further)", flush=True)
        final_dir = Path(finished["final_dir"]) if finished.get("final_dir") else None
        return TrainResult(self.output_dir, step, final_dir, [], list(finished.get("evals", [])), self.dist.rank,
                           already_finished=True)

    def save_final(self) -> Path:
        final = self.output_dir / "final"
        if self.dist.is_main:
            ckpt.save_final_model(self.output_dir, self.model, self.tokenizer)
        self.dist.barrier()
        return final


# ---------------------------------------------------------------------- helpers


def train(config: TrainConfig | dict | str | Path, resume: bool = False, overwrite: bool = False,
          allow_config_change: bool = False, **kwargs: Any) -> TrainResult:
    """Run training from a config (path, dict or TrainConfig); kwargs go to `Trainer`. The run
    folder is checked before anything is loaded: a folder holding a run needs `resume` (continue it)
    or `overwrite` (replace it); see ticgrpo.train.run_folder."""
    if isinstance(config, (str, Path)):
        kwargs.setdefault("config_dir", Path(config).parent)
    config = config if isinstance(config, TrainConfig) else load_config(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch, process 0 decides
        run_folder.check_start(config.output_dir, config, resume, overwrite, allow_config_change)
    return Trainer(config, **kwargs).train(resume=resume, overwrite=overwrite,
                                           allow_config_change=allow_config_change)
