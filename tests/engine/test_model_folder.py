"""Loading models: a damaged folder is one line naming what is damaged, never a traceback."""

import re
import shutil

import pytest

from finetune_bert.errors import UserError
from finetune_bert.engine.model_folder import load_classifier, load_model_config, load_tokenizer, refuse_model_file


@pytest.mark.parametrize("name,content,load,what", [
    ("config.json", "[1]", load_model_config, "config.json"),
    ("tokenizer.json", '"x"', load_tokenizer, "tokenizer (tokenizer.json"),
    ("model.safetensors", None, load_classifier, "weights"),
])
def test_a_damaged_model_file_is_one_line_naming_it(trained, tmp_path, name, content, load, what):
    model = shutil.copytree(trained.output, tmp_path / "m")
    path = model / name
    if content is None:
        path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk or an interrupted copy
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=rf"--model {model}: its {re.escape(what)}.* cannot be loaded \(\w+: .*\); the folder may be "
                                        "damaged or incomplete"):
        load(str(model))


def test_model_files_are_recognised_by_name_and_by_the_marker(trained, tmp_path):
    from pathlib import Path
    folder = Path(trained.output)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "metrics.json", "train_log.jsonl"):
        with pytest.raises(UserError, match="is a file of the model"):
            refuse_model_file(folder / name, trained.output, "--output")
    refuse_model_file(folder / "new-predictions.csv", trained.output, "--output")  # not there yet: fine
    (tmp_path / "config.json").write_text("{}")
    refuse_model_file(tmp_path / "config.json", trained.output, "--output")  # another folder's file: fine


def test_a_model_folder_without_tokenizer_files_is_refused_not_read_as_all_unknown(trained, tmp_path):
    model = shutil.copytree(trained.output, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    with pytest.raises(UserError, match=r"--model .*m: has no tokenizer files \(tokenizer.json, vocab.txt, "):
        load_tokenizer(str(model))
