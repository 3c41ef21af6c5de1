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
