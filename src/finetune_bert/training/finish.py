"""The end of a training run: the best model back, calibrated, scored on test; its metrics and model card.

Under several processes every rank computes the same numbers (shared inference, see torch_engine.Engine.infer); rank 0
alone writes them (the others hold a no-op run_folder.Follower)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
import torch
from finetune_bert.engine import distributed
from finetune_bert.evaluation.calibration import calibrate, score_calibrated, summary_line
from finetune_bert.engine.model_folder import ModelFolder
from finetune_bert.evaluation.metrics import ConfidentMistakes, format_metrics, scores_of, snippet
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
    if state.best_step != state.step:  # read by rank 0, which wrote it, and sent to the others
        from safetensors.torch import load_file
        best = load_file(str(run.path / "model.safetensors"), device=str(engine.device)) if job.world.main else None
        engine.load_weights(distributed.weights_from_main(best, job.world))
    metrics: dict[str, Any] = {"validation": state.best_metrics, "best_step": state.best_step,
                               "history": state.history,
                               "train": {"steps": state.step, "seconds": round(train_seconds, 1),
                                         "skipped_steps": state.skipped_steps, "examples": len(job.enc["train"]),
                                         "micro_splits": state.micro_splits}}
    names, batch_size = job.ds.label_names, state.eval_batch_size
    t, measures, logits = calibrate(engine, job.enc["validation"], names, batch_size, cfg.calibrate)
    if t.kept:  # the folded weights replace the saved model, T recorded beside them
        run.save_model(engine.model, job.tokenizer, job.run_info(t.value), engine.weights())
    run.log("calibration", temperature=t.value, fitted=t.fitted, note=t.note)
    metrics["calibration"] = {**t.to_json(), "validation": measures}
    split = "validation"
    if "test" in job.enc:
        split, logits = "test", _score_test(job, t, metrics)
    console.say(summary_line(t, {s: metrics["calibration"][s] for s in ("validation", "test") if s in metrics["calibration"]}))
    metrics["mistakes"] = _mistakes(job, split, logits)
    metrics["seconds_total"] = round(time.time() - job.started, 1)
    run.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
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


def _score_test(job: Job, t, metrics: dict[str, Any]) -> torch.Tensor:
    """Test as training read it (long texts cut), and, when some test text is longer than the model reads, also
    read whole as `evaluate` and `predict` read it by default: each number says which reading gave it."""
    scoring, enc, length = time.time(), job.enc["test"], job.prepared.tokens.max_length
    names, batch_size = job.ds.label_names, job.state.eval_batch_size
    metrics["test"], metrics["calibration"]["test"], logits = score_calibrated(job.engine, enc, names, batch_size, t)
    longer = int((enc.full_lengths > length).sum())
    metrics["test"]["reading"] = {"long_texts": "truncate", "truncation": job.cfg.truncation, "max_length": length,
                                  "longer_texts": longer}
    cut = f"; {longer} longer than {length} tokens, cut {job.cfg.truncation} as in training" if longer else ""
    console.say(format_metrics(metrics["test"], f"test ({metrics['test']['n']} texts{cut}), best model from step "
                                                f"{job.state.best_step}"))
    if longer:
        whole, reading = _read_whole(job, t.value)
        metrics["test_read_whole"] = {**{k: whole[k] for k in ("accuracy", "f1_macro", "log_loss", "n")},
                                      "reading": reading}
        console.say(f"test with long texts read whole, as evaluate and predict read them by default: accuracy "
                    f"{whole['accuracy']:.4f}, macro F1 {whole['f1_macro']:.4f}")
    metrics["test"]["seconds"] = round(time.time() - scoring, 2)
    return logits


def _read_whole(job: Job, temperature: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test metrics with every text read whole, as windows whose logits are averaged, and that reading."""
    folder = ModelFolder(str(job.run.path), str(job.run.path), info=job.run_info(temperature))
    clf = Classifier(job.engine, job.tokenizer, folder, Reading(long_texts="chunks"))
    prepared, _ = clf.prepare(job.ds.test.texts, cleaned=True)
    logits = torch.from_numpy(clf.logits_of([prepared], job.state.eval_batch_size))
    return scores_of(logits, job.enc["test"], job.ds.label_names), clf.reading_json()


def _mistakes(job: Job, split: str, logits: torch.Tensor, k: int = 20) -> list[dict[str, Any]]:
    """The k most confident mistakes among `split`'s logits (input order), texts shortened, for the report."""
    data = job.ds.test if split == "test" else job.ds.val
    tracker = ConfidentMistakes(k, job.ds.label_names)
    tracker.update(logits, torch.from_numpy(job.enc[split].labels),
                   lambda j: {"split": split, "row": data.where[j], "text": snippet(data.texts[j])})
    return tracker.rows()
