"""The domain file: which labelled tasks a prompt generator is trained on, in the client's task format.

Each task is a client task (template, choices, label field) plus a data file whose rows are all
training data, so a training example is templated exactly as a user's ``cbpt tune`` templates it,
and scored by the same engine path. ``exclude`` lists data files whose texts must never enter
training (the test splits of demos and benchmarks): a row whose text hashes to one of theirs is
dropped, and the count is recorded.

    domain: opinion
    description: sentiment of short English texts
    exclude: [data/held-out.jsonl]
    tasks:
      - name: sst2
        data: data/sst2-train.jsonl
        template: "Review: {text}\\nSentiment:"
        choices: {negative: " negative", positive: " positive"}
      - name: tweets
        task: ../../examples/tweets/task.yaml   # or a client task file (its data.train unless data is given)
        weight: 1.0
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cbpt.common.errors import TaskError
from cbpt.common.files import file_sha256
from cbpt.common.tasks.loaders import read_rows
from cbpt.common.tasks.task import Examples, TaskFormat
from cbpt.server.errors import ConfigError

_FORMAT_FIELDS = tuple(TaskFormat.model_fields)


def text_digest(text: str) -> str:
    """sha256 of a text with its whitespace collapsed: how excluded and training texts are compared."""
    return hashlib.sha256(" ".join(str(text).split()).encode("utf-8")).hexdigest()


class DomainTask(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # the task format's own fields ride along

    name: str
    task: Path | None = None  # a client task file: its format, and its data.train unless ``data`` is set
    data: Path | None = None
    weight: float = Field(1.0, gt=0)
    dev_per_class: int = Field(50, ge=0)  # held out of training, scored every eval_every steps
    max_examples: int | None = Field(None, ge=1)


class DomainFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    description: str = ""
    exclude: list[Path] = Field(default_factory=list)
    tasks: list[DomainTask] = Field(min_length=1)


@dataclass(frozen=True)
class TrainingTask:
    """One task's training and dev examples, templated by its format."""

    name: str
    format: TaskFormat
    train: Examples
    dev: Examples
    weight: float
    data_file: str
    data_sha256: str
    dropped: int  # rows dropped because their text is in an excluded file
    text_digests: frozenset[str]  # of every kept row's text fields: what a disjointness check compares
    over_limits: int = 0  # rows left out because the engine would refuse them (trainer: shapes.fit_domain)
    truncated: int = 0  # texts cut as the task's ``truncate`` says (trainer: shapes.fit_domain)

    @property
    def num_choices(self) -> int:
        """The most choices an example has (the label count for fixed choices)."""
        return max(self.train.choices.width, self.dev.choices.width)

    def record(self) -> dict[str, Any]:
        """What generator.json says about this task (no texts, no paths beyond the file name)."""
        shape = {"options_field": self.format.options_field, "option_template": self.format.option_template}
        return {
            "name": self.name,
            "template": self.format.template,
            "choices": self.format.choices,
            **(shape if self.format.options_field is not None else {}),
            "mode": self.format.mode,
            "data_file": self.data_file,
            "data_sha256": self.data_sha256,
            "train_examples": len(self.train),
            "dev_examples": len(self.dev),
            "dropped_as_excluded": self.dropped,
            "dropped_over_limits": self.over_limits,
            "truncated": self.truncated,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    tasks: tuple[TrainingTask, ...]
    excluded_digests: frozenset[str]
    source_sha256: str


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def excluded_texts(files: Iterable[Path]) -> frozenset[str]:
    """Digests of every string field of every row of ``files`` (whatever the field is called)."""
    digests: set[str] = set()
    for path in files:
        for row in read_rows(path, field="exclude"):
            digests.update(
                text_digest(value) for value in row.values() if isinstance(value, str) and value.strip()
            )
    return frozenset(digests)


def _task_format(entry: DomainTask, base: Path) -> tuple[TaskFormat, Path]:
    raw: dict[str, Any] = dict(entry.model_extra or {})
    data = entry.data
    if entry.task is not None:
        task_path = _resolve(base, entry.task)
        try:
            task_raw = yaml.safe_load(task_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"task {entry.name!r}: cannot read task file {task_path}: {error}") from None
        if data is None:
            data = _resolve(task_path.parent, Path(task_raw["data"]["train"]))
        raw = {key: value for key, value in task_raw.items() if key in _FORMAT_FIELDS} | raw
    if data is None:
        raise ConfigError(f"task {entry.name!r}: give data (a labelled file) or task (a client task file)")
    try:
        return TaskFormat.model_validate(raw), _resolve(base, data)
    except ValidationError as error:
        raise ConfigError(f"task {entry.name!r}: {error.errors()[0]['msg']}") from None


def _split(
    examples: Examples, dev_per_class: int, max_examples: int | None, seed: int
) -> tuple[Examples, Examples]:
    assert examples.labels is not None
    rng = np.random.default_rng(seed)
    dev: list[int] = []
    for label in np.unique(examples.labels):
        members = rng.permutation(np.flatnonzero(examples.labels == label))
        dev.extend(members[:dev_per_class].tolist())
    held = set(dev)
    train = rng.permutation([i for i in range(len(examples)) if i not in held])
    if max_examples is not None:
        train = train[:max_examples]
    return examples.take(train.tolist()), examples.take(sorted(dev))


def load_domain(path: Path, seed: int = 0) -> Domain:
    """Read a domain file and every task's data; refuse what cannot be trained on, naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        spec = DomainFile.model_validate(yaml.safe_load(text))
    except OSError as error:
        raise ConfigError(f"domain file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"domain file {path} is not valid YAML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"domain file {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    base = path.parent
    excluded = excluded_texts(_resolve(base, file) for file in spec.exclude)
    tasks = []
    for entry in spec.tasks:
        task_format, data = _task_format(entry, base)
        rows = read_rows(data, field=f"tasks[{entry.name}].data")
        fields = task_format.text_fields
        numbers = [
            number
            for number, row in enumerate(rows)
            if not any(text_digest(str(row.get(name, ""))) in excluded for name in fields)
        ]
        kept = [rows[number] for number in numbers]
        try:
            examples = task_format.examples(kept, str(data))
        except TaskError as error:
            raise ConfigError(f"task {entry.name!r}: {error}") from None
        examples = dataclasses.replace(examples, rows=tuple(numbers))  # the file's own row numbers
        train, dev = _split(examples, entry.dev_per_class, entry.max_examples, seed)
        digests = frozenset(text_digest(str(row.get(name, ""))) for row in kept for name in fields)
        tasks.append(
            TrainingTask(
                entry.name,
                task_format,
                train,
                dev,
                entry.weight,
                data.name,
                file_sha256(data),
                len(rows) - len(kept),
                digests,
            )
        )
    source = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Domain(spec.domain, spec.description, tuple(tasks), excluded, source)
