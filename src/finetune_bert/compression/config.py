"""`distill`'s and `prune`'s options: every train option (each is a training run of a smaller model), and their own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from finetune_bert.engine.layers import LAYER_PICKS
from finetune_bert.engine.run_info import RUN_FILE, RunInfo
from finetune_bert.options import finite, opt, range_problems
from finetune_bert.tasks import REGRESSION, TASKS
from finetune_bert.training.config import KD_ALPHA, KD_TEMPERATURE, TrainConfig

TASK_HELP = "What a label is: one class per text (classification), a set of labels per text (multi-label), or a number "


def _kind_of(model: str | None) -> str | None:
    """The task kind a fine-tuned model folder was trained for (its finetune_bert.json), or None."""
    folder = Path(str(model)).expanduser() if model else None
    return RunInfo.read(folder).task if folder is not None and (folder / RUN_FILE).is_file() else None


def _same_or_inside(path: str | None, folder: str | None) -> bool:
    """`path` is the folder `folder`, or lies inside it (both existing or not)."""
    if not path or not folder or not Path(folder).expanduser().is_dir():
        return False
    out, inside = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return out == inside or inside in out.parents


@dataclass
class DistillConfig(TrainConfig):
    """`distill`: train a student (--student, every train option) on a teacher's softened outputs mixed with the
    true labels, and on texts without labels that the teacher labels alone."""

    teacher: str = opt(None, "The teacher: a model folder fine-tuned for the data's labels and task kind (a "
                             "finetune-bert output), whose outputs the student learns from.", required=True)
    model: str = opt("bert-base-uncased", "The student: a hub id, a model folder, or 'minilm' (the bundled offline "
                                          "all-MiniLM-L6-v2); --student-layers cuts it to fewer of its own layers.",
                     aliases=("--student",))
    task: str | None = opt(None, TASK_HELP + "(regression); default: the teacher's.", choices=TASKS)
    unlabeled: str | None = opt(None, "Texts without labels, in any form --data takes (a label column, if any, is not "
                                      "read): the student learns them from the teacher alone.")
    kd_temperature: float = opt(KD_TEMPERATURE, "The temperature that softens the teacher's and the student's outputs "
                                                "in the teacher's loss, scaled by its square (Hinton et al. 2015); "
                                                "not used for regression, where the student matches the teacher's value.")
    kd_alpha: float = opt(KD_ALPHA, "The weight of the true labels' loss; the teacher's gets 1 - alpha (0: the teacher "
                                    "alone, 1: no teacher).", at_least=0, at_most=1)
    student_layers: int | None = opt(None, "Make the student from this many of --student's own encoder layers (as "
                                           "DistilBERT's was made from BERT's), picked by --layer-pick.", at_least=1)
    layer_pick: str = opt("first", "The layers --student-layers keeps: the first N (first), or every k-th, ending with "
                                   "the last (spread; 3 of 6: layers 2, 4 and 6).", choices=LAYER_PICKS)

    def with_defaults(self) -> DistillConfig:
        """The task kind, the teacher's when not given; then train's own defaults."""
        kind = self if self.task is not None else dataclasses.replace(self, task=_kind_of(self.teacher) or "classification")
        return TrainConfig.with_defaults(kind)

    def problems(self) -> list[str]:
        found = TrainConfig.problems(self)
        if finite(self.kd_temperature) and self.kd_temperature <= 0:
            found.append(f"--kd-temperature must be positive, got {self.kd_temperature}")
        if self.nproc_per_node != 1:
            found.append("--nproc-per-node is for train; distill trains its student in one process")
        if self.layer_pick != "first" and self.student_layers is None:
            found.append("--layer-pick says which layers --student-layers keeps: give --student-layers N, or drop it")
        if _same_or_inside(self.output, self.teacher):
            found.append(f"--output {self.output} is or lies inside the --teacher folder; writing there would change "
                         "the teacher: choose a new folder")
        if self.unlabeled and _same_or_inside(self.output, self.unlabeled):
            found.append(f"--output {self.output} must not be the --unlabeled data; choose a folder outside it")
        return found

    def warnings(self) -> list[str]:
        found = TrainConfig.warnings(self)
        if self.task == REGRESSION and self.kd_temperature != KD_TEMPERATURE:
            found.append("--kd-temperature has no effect for regression: the student matches the teacher's value")
        return found


# What prune without --data leaves to decide; a training option then would be silently ignored, so it is refused.
PRUNE_ONLY = {"model", "output", "overwrite", "keep_layers", "trust_remote_code", "num_threads", "debug", "task"}


@dataclass
class PruneConfig(TrainConfig):
    """`prune`: a fine-tuned model with only its first --keep-layers encoder layers; with --data, fine-tuned briefly
    afterwards, a training run with every train option."""

    model: str = opt(None, "The fine-tuned model folder to prune; it is never changed.", required=True)
    output: str = opt(None, "Where the pruned model goes: a new folder (never --model's).", required=True)
    keep_layers: int = opt(None, "Keep the model's first N encoder layers, dropping the ones above them (fewer than "
                                 "it has).", required=True, at_least=1)
    data: str | None = opt(None, "Fine-tune the pruned model briefly on this data (every train option applies); "
                                 "without it the pruned model is written as it is.")
    epochs: float = opt(1, "With --data: passes over the training data.")
    task: str | None = opt(None, TASK_HELP + "(regression); default: the model's.", choices=TASKS)

    @property
    def student_layers(self) -> int:
        """What training's model setup keeps (training.job._setup_model): the first --keep-layers."""
        return self.keep_layers

    @property
    def layer_pick(self) -> str:
        return "first"

    def with_defaults(self) -> PruneConfig:
        kind = self if self.task is not None else dataclasses.replace(self, task=_kind_of(self.model) or "classification")
        return TrainConfig.with_defaults(kind)

    def problems(self) -> list[str]:
        if not self.model or not str(self.model).strip():
            return range_problems(self, only=PruneConfig)
        found = TrainConfig.problems(self) if self.data else range_problems(self, only=PruneConfig)
        if not self.data and (given := self._ignored()):
            found.append(f"{', '.join(given)}: training options, and nothing is trained without --data; drop them, "
                         "or give --data to fine-tune the pruned model")
        if _same_or_inside(self.output, self.model):
            found.append(f"--output {self.output} is or lies inside the --model folder, which prune never changes: "
                         "choose a new folder")
        return found

    def _ignored(self) -> list[str]:
        defaults = PruneConfig(model=self.model, output=self.output, keep_layers=self.keep_layers).with_defaults()
        return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(self)
                if f.name not in PRUNE_ONLY and getattr(self, f.name) != getattr(defaults, f.name)]
