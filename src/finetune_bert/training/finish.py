"""The end of a training run: the best model back, calibrated, scored on test; its metrics and model card.

Under several processes every rank computes the same numbers (shared inference, see torch_engine.Engine.infer); rank 0
alone writes them (the others hold a no-op run_folder.Follower)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
import torch
from finetune_bert.engine import distributed
from finetune_bert.engine.model_folder import ModelFolder
from finetune_bert.engine.lora import ADAPTER_DIR, set_adapter_head
from finetune_bert.evaluation.explained import explain_rows, metrics_text
from finetune_bert.evaluation.metrics import ConfidentMistakes, snippet
from finetune_bert.evaluation.scoring import score_logits
from finetune_bert.evaluation.tables import format_any
from finetune_bert.evaluation.task_metrics import LargestErrors
from finetune_bert.tasks import CLASSIFICATION, HEADLINE, REGRESSION
from finetune_bert.training.calibrated import Calibrated, calibrate_kind
from finetune_bert.training.exported import export_at_end
from finetune_bert.training.kinds import fold_scale
from finetune_bert.inference.classifier import Classifier
from finetune_bert.inference.reading import Reading
from finetune_bert.console import console
from finetune_bert.training.job import Job
from finetune_bert.training.model_card import model_card


@dataclass
class TrainResult:
    output: str
    metrics: dict[str, Any]
    best_step: int


def finish(job: Job, train_seconds: float) -> TrainResult:
    """Calibrate the best model, score it on test; write metrics, the model card and the report."""
    cfg, run, state, engine = job.cfg, job.run, job.state, job.engine
    engine.merge_lora()  # from here the engine runs the plain model it saves (nothing to do without LoRA)
    if state.best_step != state.step:  # read by rank 0, which wrote it, and sent to the others
        from safetensors.torch import load_file
        best = load_file(str(run.path / "model.safetensors"), device=str(engine.device)) if job.world.main else None
        best = distributed.weights_from_main(best, job.world)
        engine.load_weights(fold_scale(best, engine.model, job.ds.target_scale, undo=True))  # saved folded
    metrics: dict[str, Any] = {"task": job.ds.task, "validation": state.best_metrics, "best_step": state.best_step,
                               "history": state.history,
                               "train": {"steps": state.step, "seconds": round(train_seconds, 1),
                                         "skipped_steps": state.skipped_steps, "examples": len(job.enc["train"]),
                                         "micro_splits": state.micro_splits}}
    done = calibrate_kind(job)
    if done.save:  # the folded weights replace the saved model, what was decided recorded beside them
        run.save_model(engine.model, job.tokenizer, job.run_info(done.temperature, **done.decided),
                       job.saved_weights())
    if cfg.lora_save_adapter and job.world.main:  # the adapter gives what the folder gives: the same head
        set_adapter_head(run.path / ADAPTER_DIR, job.saved_weights())
    run.log("calibration", **done.log)
    metrics["calibration"] = done.record
    split, logits = "validation", done.logits
    if "test" in job.enc:
        split, logits = "test", _score_test(job, done, metrics)
    console.say(done.summary(metrics["calibration"]))
    if job.ds.task == CLASSIFICATION:  # confident mistakes are a classifier's; a regression has its largest errors
        metrics["mistakes"] = _mistakes(job, split, logits)
    elif job.ds.task == REGRESSION:
        metrics["largest_errors"] = _largest_errors(job, split, logits, done.scoring.scale)
    _explain_listed(job, done, split, metrics)
    metrics.update(export_at_end(run, cfg, job.world.main))  # the weights are final: predict's default finds it
    metrics["seconds_total"] = round(time.time() - job.started, 1)
    run.write_text("metrics.json", metrics_text(metrics))
    if job.world.main:  # the card hashes the data files: once, in the process that writes it
        run.write_text("README.md", model_card(cfg, job.report, metrics))
    if cfg.report and job.world.main:
        from finetune_bert.evaluation.report_page import run_report
        run.write_text("report.html", run_report(run.path))
    run.log("end", step=state.step, best_step=state.best_step, seconds=metrics["seconds_total"])
    if cfg.keep_checkpoints == 0:  # they were only kept for a crash; the run is done
        run.remove_checkpoints()
    console.say(f"model saved to {run.path} (best {cfg.metric} {state.best:.4f} at step {state.best_step}); "
        f"training took {train_seconds:.0f}s" + (f"; report: {run.path / 'report.html'}" if cfg.report else ""))
    return TrainResult(str(run.path), metrics, state.best_step)


def _score_test(job: Job, done: Calibrated, metrics: dict[str, Any]) -> torch.Tensor:
    """Test as training read it (long texts cut), and, when some test text is longer than the model reads, also
    read whole as `evaluate` and `predict` read it by default: each number says which reading gave it."""
    scoring, enc, length = time.time(), job.enc["test"], job.prepared.tokens.max_length
    names, batch_size = job.ds.label_names, job.state.eval_batch_size
    metrics["test"], measures, logits = done.score(job.engine, enc, names, batch_size)
    if measures is not None:
        metrics["calibration"]["test"] = measures
    longer = int((enc.full_lengths > length).sum())
    metrics["test"]["reading"] = {"long_texts": "truncate", "truncation": job.cfg.truncation, "max_length": length,
                                  "longer_texts": longer}
    cut = f"; {longer} longer than {length} tokens, cut {job.cfg.truncation} as in training" if longer else ""
    console.say(format_any(metrics["test"], f"test ({metrics['test']['n']} texts{cut}), best model from step "
                                            f"{job.state.best_step}"))
    if longer and job.ds.test.pairs is None:  # pairs are always cut: there is no other reading of them
        whole, reading = _read_whole(job, done)
        headline = HEADLINE[job.ds.task]
        metrics["test_read_whole"] = {**{k: whole[k] for k in (*headline, "n") if k in whole}, "reading": reading}
        console.say("test with long texts read whole, as evaluate and predict read them by default: "
                    + ", ".join(f"{k} {whole[k]:.4f}" for k in headline if whole.get(k) is not None))
    metrics["test"]["seconds"] = round(time.time() - scoring, 2)
    return logits


def _read_whole(job: Job, done: Calibrated) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test metrics with every text read whole, as windows whose logits are averaged, and that reading."""
    folder = ModelFolder(str(job.run.path), str(job.run.path), info=job.run_info(done.temperature, **done.decided))
    clf = Classifier(job.engine, job.tokenizer, folder, Reading(long_texts="chunks"))
    prepared, _ = clf.prepare(job.ds.test.texts, cleaned=True)
    logits = torch.from_numpy(clf.logits_of([prepared], job.state.eval_batch_size))
    return score_logits(logits, job.enc["test"], job.ds.label_names, done.scoring), clf.reading_json()


def _mistakes(job: Job, split: str, logits: torch.Tensor, k: int = 20) -> list[dict[str, Any]]:
    """The k most confident mistakes among `split`'s logits (input order), texts shortened, for the report."""
    data = job.ds.test if split == "test" else job.ds.val
    tracker = ConfidentMistakes(k, job.ds.label_names)
    tracker.update(logits, torch.from_numpy(job.enc[split].labels),
                   lambda j: {"split": split, "row": data.where[j], "text": snippet(data.texts[j]), "index": j})
    return tracker.rows()


def _explain_listed(job: Job, done: Calibrated, split: str, metrics: dict[str, Any]) -> None:
    """The listed mistakes explained with the model just trained, for the report's coloured words: at most 20
    texts in one batched call, only when the report is written (rank 0). A regression's largest errors are left
    to `evaluate --errors`, which explains them when asked. Each row's "index" (its place in the split, to find
    its whole text) is dropped either way."""
    index = [row.pop("index") for row in metrics.get("mistakes") or metrics.get("largest_errors") or []]
    rows = metrics.get("mistakes")
    if not rows or not job.cfg.report or not job.world.main:
        return
    data = job.ds.test if split == "test" else job.ds.val
    items = [data.texts[j] if data.pairs is None else (data.texts[j], data.pairs[j]) for j in index]
    folder = ModelFolder(str(job.run.path), str(job.run.path), info=job.run_info(done.temperature, **done.decided))
    clf = Classifier(job.engine, job.tokenizer, folder, Reading(long_texts="truncate"))  # as test was read
    model, training = job.engine.model, job.engine.model.training
    model.eval()  # no dropout: the gradients must be the model's, not noise
    try:
        seconds = explain_rows(clf, rows, items, metrics)
    finally:
        model.train(training)
    console.say(f"the {len(rows)} listed mistakes explained for the report in {seconds:.1f}s")


def _largest_errors(job: Job, split: str, outputs: torch.Tensor, scale: tuple[float, float],
                    k: int = 20) -> list[dict[str, Any]]:
    """A regression's k predictions furthest from their targets on `split`, in the targets' units."""
    data = job.ds.test if split == "test" else job.ds.val
    tracker = LargestErrors(k, scale)
    tracker.update(outputs, torch.from_numpy(job.enc[split].labels),
                   lambda j: {"split": split, "row": data.where[j], "text": snippet(data.texts[j]), "index": j})
    return tracker.rows()
