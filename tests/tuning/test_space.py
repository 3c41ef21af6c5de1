"""The search space: the published default, and a space file whose every mistake is named at once."""

import json

import pytest

from finetune_bert.errors import UserError
from finetune_bert.tuning.space import DEFAULT_SPACE, read_space, space_json


def _write(tmp_path, payload, name="space.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_default_space_is_the_published_recipes_and_never_the_seed():
    assert space_json(DEFAULT_SPACE) == {
        "lr": {"low": 1e-5, "high": 1e-4, "log": True}, "batch_size": {"choices": [16, 32]},
        "epochs": {"low": 2, "high": 4}, "warmup_ratio": {"choices": [0.0, 0.06, 0.1]},
        "weight_decay": {"choices": [0.0, 0.01, 0.1]}}
    assert read_space(None) == DEFAULT_SPACE


def test_a_space_file_replaces_the_default(tmp_path):
    space = read_space(_write(tmp_path, {"lr": {"low": 1e-5, "high": 5e-5, "log": True}, "batch_size": {"choices": [8]}}))
    assert space_json(space) == {"lr": {"low": 1e-5, "high": 5e-5, "log": True}, "batch_size": {"choices": [8]}}


def test_yaml_space_file(tmp_path):
    pytest.importorskip("yaml")
    space = read_space(_write(tmp_path, "epochs:\n  low: 1\n  high: 3\n", "space.yaml"))
    assert space_json(space) == {"epochs": {"low": 1, "high": 3}}


@pytest.mark.parametrize("entry, words", [
    ({"seed": {"choices": [1, 2]}}, "'seed': not a searchable option"),
    ({"lr": {"low": 1e-3, "high": 1e-5}}, "'lr': low 0.001 is more than high 1e-05"),
    ({"batch_size": {"choices": []}}, "'batch_size': choices must be a non-empty list"),
    ({"batch_size": {"low": 8.5, "high": 16}}, "'batch_size': batch_size takes whole numbers"),
    ({"lr": {"low": "small", "high": 1e-4}}, "'lr': low and high must be numbers"),
    ({"lr": {"low": 0, "high": 1e-4, "log": True}}, "'lr': a log range needs low > 0"),
    ({"lr": {"high": 1e-4}}, "'lr': a range needs both low and high"),
    ({"lr": {"low": 1e-5, "hi": 1e-4}}, "'lr': unknown key(s) hi"),
    ({"batch_size": {"choices": [16, 0]}}, "'batch_size': choices [0] are not valid values"),
    ({"lr": 1e-5}, "'lr': expected"),
])
def test_each_space_mistake_is_one_line_naming_its_entry(tmp_path, entry, words):
    with pytest.raises(UserError) as caught:
        read_space(_write(tmp_path, entry))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_every_space_mistake_is_reported_at_once(tmp_path):
    with pytest.raises(UserError) as caught:
        read_space(_write(tmp_path, {"seed": {"choices": [1]}, "lr": {"low": 1, "high": 0}}))
    assert "'seed'" in str(caught.value) and "'lr'" in str(caught.value)


@pytest.mark.parametrize("payload, words", [("{not json", "not valid JSON"), ("[]", "expected an object"),
                                            ("{}", "expected an object")])
def test_a_space_file_that_is_not_an_object_is_one_line(tmp_path, payload, words):
    with pytest.raises(UserError, match=words):
        read_space(_write(tmp_path, payload))


def test_a_missing_space_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot be read"):
        read_space(str(tmp_path / "nope.json"))


TRAIN = dict(data="d.csv", output="o")


@pytest.mark.parametrize("entry, words", [
    ({"epochs": {"low": 0, "high": 3}}, "entry 'epochs': low 0: --epochs must be positive, got 0"),
    ({"warmup_ratio": {"low": 0.0, "high": 1.5}}, "entry 'warmup_ratio': high 1.5: --warmup-ratio must be in [0, 1), got 1.5"),
    ({"warmup_ratio": {"choices": [0.1, 1]}}, "entry 'warmup_ratio': choice 1.0: --warmup-ratio must be in [0, 1), got 1.0"),
    ({"lr": {"choices": [0, 1e-5]}}, "entry 'lr': choice 0.0: --lr must be positive, got 0.0"),
    ({"lr": {"low": 0.0, "high": 1e-4}}, "entry 'lr': low 0.0: --lr must be positive, got 0.0"),
    ({"epochs": {"choices": [0.0, 2]}}, "entry 'epochs': choice 0.0: --epochs must be positive, got 0.0"),
])
def test_a_space_value_train_refuses_is_refused_naming_the_file_and_the_option(tmp_path, entry, words):
    from finetune_bert.training.config import TrainConfig
    path = _write(tmp_path, entry)
    with pytest.raises(UserError) as caught:
        read_space(path, TrainConfig(**TRAIN))
    assert str(caught.value) == f"--space {path}: {words}"


def test_a_space_within_trains_rules_passes_and_every_refusal_is_reported_at_once(tmp_path):
    from finetune_bert.training.config import TrainConfig
    fine = {"lr": {"low": 1e-6, "high": 0.5}, "warmup_ratio": {"low": 0, "high": 0.99}, "epochs": {"choices": [0.5, 9]}}
    assert len(read_space(_write(tmp_path, fine), TrainConfig(**TRAIN))) == 3
    with pytest.raises(UserError) as caught:
        read_space(_write(tmp_path, {"epochs": {"low": 0, "high": 2}, "warmup_ratio": {"choices": [1.5]}}),
                   TrainConfig(**TRAIN))
    assert "--epochs must be positive" in str(caught.value) and "--warmup-ratio must be in" in str(caught.value)
    assert "\n" not in str(caught.value)


SMALL = {"lr": {"choices": [0.01, 0.02]}, "epochs": {"low": 2, "high": 3}}  # 4 configurations


def _study(path, seed=3, space=None):
    import optuna
    from finetune_bert.tuning.space import FreshSampler
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = read_space(_write(path.parent, space or SMALL, "small.json"))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}", load_if_exists=True, direction="maximize",
                                sampler=FreshSampler(dims, seed))
    return study, dims


def _trials(path, n, **kw):
    study, dims = _study(path, **kw)
    study.optimize(lambda trial: sum(float(d.suggest(trial)) for d in dims), n_trials=n)
    return [tuple(sorted(t.params.items())) for t in study.get_trials()]


def test_a_study_continued_after_a_restart_draws_new_points(tmp_path):
    _trials(tmp_path / "a.db", 2)  # the process stops after 2 trials; a new one continues the study
    assert len(set(_trials(tmp_path / "a.db", 2))) == 4


def test_two_processes_on_one_study_draw_different_points(tmp_path):
    first, _ = _study(tmp_path / "b.db")
    second, dims = _study(tmp_path / "b.db")  # the same --seed, another process
    for study in (first, second, first, second):
        study.optimize(lambda trial: sum(float(d.suggest(trial)) for d in dims), n_trials=1)
    assert len({tuple(sorted(t.params.items())) for t in first.get_trials()}) == 4


def test_a_fresh_study_with_the_same_seed_draws_the_same_trials(tmp_path):
    wide = {"lr": {"low": 1e-5, "high": 1e-4, "log": True}, "batch_size": {"choices": [8, 16]}}
    once = _trials(tmp_path / "c.db", 12, space=wide)  # past TPE's 10 random startup trials
    assert _trials(tmp_path / "d.db", 12, space=wide) == once
    assert _trials(tmp_path / "e.db", 12, space=wide, seed=4) != once
    assert len(set(once)) == 12


def test_trial_seeds_differ_by_trial_and_by_seed():
    from finetune_bert.tuning.space import trial_seed
    seeds = {trial_seed(seed, number) for seed in range(5) for number in range(50)}
    assert len(seeds) == 250 and trial_seed(3, 7) == trial_seed(3, 7)


def test_with_lora_the_default_space_searches_larger_rates_and_the_adapters():
    from finetune_bert.training.config import TrainConfig
    from finetune_bert.tuning.space import LORA_SPACE

    space = space_json(read_space(None, TrainConfig(data="d.csv", output="o", lora=True)))
    assert space["lr"] == {"low": 1e-4, "high": 1e-3, "log": True}
    assert space["lora_rank"] == {"choices": [4, 8, 16]} and read_space(None, TrainConfig(data="d.csv", output="o")) == DEFAULT_SPACE
    assert read_space(None, TrainConfig(data="d.csv", output="o", lora=True)) == LORA_SPACE


def test_searching_lora_settings_without_lora_is_refused(tmp_path):
    from finetune_bert.training.config import TrainConfig

    with pytest.raises(UserError, match="entry 'lora_rank'.*add --lora"):
        read_space(_write(tmp_path, {"lora_rank": {"choices": [4, 8]}}), TrainConfig(data="d.csv", output="o"))
