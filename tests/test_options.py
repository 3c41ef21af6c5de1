"""Typed configs: bounds, choices and unreadable numbers reported at once; options that can have no effect."""

import pytest

from finetune_bert.options import NotANumber
from finetune_bert.training.config import TrainConfig
from finetune_bert.evaluation.config import EvaluateConfig


def test_every_problem_is_listed_at_once():
    cfg = TrainConfig(data="d.csv", output="o", epochs=NotANumber("abc", "a number"), seed=-1, truncation="x",
                      class_weights="balanced", warmup_ratio=float("nan"))
    found = cfg.problems()
    assert "--epochs must be a number, got 'abc'" in found
    assert "--seed must be at least 0, got -1" in found
    assert "--truncation must be one of head, tail, head+tail, got 'x'" in found
    assert ("--class-weights balanced: 'balanced' is not NAME=WEIGHT; give none, auto, or weights by label name "
            "such as negative=1,positive=3") in found
    assert [p for p in found if p.startswith("--warmup-ratio")] == ["--warmup-ratio must be a finite number, got nan"]


def test_evaluate_bounds_its_seed_as_train_does():
    assert EvaluateConfig(model="m", data="d", seed=2**40).problems() == [f"--seed must be at most {2**32 - 1}, "
                                                                        f"got {2**40}"]


@pytest.mark.parametrize("options,warning", [
    ({"val_data": "v.csv", "val_fraction": 0.2}, "--val-fraction has no effect with --val-data"),
    ({"truncation": "head", "head_tokens": 64}, "--head-tokens has no effect with --truncation head"),
    ({"max_length": 32, "head_tokens": 100}, "--head-tokens 100 is more than half of the 30-token budget: the first "
                                             "15 tokens and the last 15 are kept"),
])
def test_options_that_can_have_no_effect_are_said(options, warning):
    assert TrainConfig(data="d.csv", output="o", **options).warnings() == [warning]
    assert TrainConfig(data="d.csv", output="o", max_length=32).warnings() == []  # the default head, quietly


def test_an_empty_model_name_is_refused_not_read_as_the_current_folder():
    assert "--model must not be empty: a hub id, a model folder, or minilm" in TrainConfig(data="d", output="o",
                                                                                            model=" ").problems()
