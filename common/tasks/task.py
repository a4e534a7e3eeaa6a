"""Task: which data, how a row becomes an unlabelled text, and which choices the model scores.

Labels stay here. A ``Task`` hands the tuner ``texts`` (templated, no label) and
``labels`` (int indices into the choices) separately, and the template may not
reference the label field, so a label can never ride along inside a text.

A task is a YAML/TOML/JSON file or built in Python::

    name: sst2
    data: {train: train.jsonl, test: dev.jsonl}   # relative to this file's folder
    template: "Review: {text}\\nSentiment:"
    label_field: label
    choices: {negative: " negative", positive: " positive"}
    shots_per_class: 16
    dev_per_class: 8
    seed: 0
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from cbpt.common.config_files import ANY_SETTINGS_FILE, read_mapping
from cbpt.common.errors import TaskError
from cbpt.common.tasks.task_format import Examples, TaskFormat, split_cue, template_fields

__all__ = ["DataFiles", "Examples", "Task", "TaskFormat", "split_cue", "template_fields"]


class DataFiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train: Path
    test: Path | None = None


class Task(TaskFormat):
    """A labelled task: data files plus k-shot sampling (per class, seeded) and a disjoint dev split."""

    name: str
    data: DataFiles
    shots_per_class: int = Field(16, ge=1)
    dev_per_class: int = Field(8, ge=0)
    seed: int = 0

    _splits: tuple[Examples, Examples] | None = PrivateAttr(None)
    _train_sha256: str | None = PrivateAttr(None)
    _label_counts: np.ndarray | None = PrivateAttr(None)

    @classmethod
    def from_file(cls, path: str | Path) -> Task:
        """Load a .yaml/.yml, .toml or .json task; relative data paths resolve against its folder."""
        path = Path(path)
        raw = _read_task_file(path)
        data = raw.get("data")
        if isinstance(data, dict):
            raw["data"] = {
                key: str((path.parent / value).resolve()) if isinstance(value, str) else value
                for key, value in data.items()
            }
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "task") -> Task:
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise TaskError(f"{source}: {_first_problem(error)}") from None

    # -- splits ----------------------------------------------------------------------------------
    def load(self) -> tuple[Examples, Examples]:
        """Read and sample the train file now (it is otherwise read on first use): (train, dev)."""
        return self._load()

    def _load(self) -> tuple[Examples, Examples]:
        if self._splits is None:
            path = Path(self.data.train)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            everything = self.load_examples(path, field="data.train")
            self._train_sha256 = digest
            self._splits = self._sample(everything, path.name)
            assert everything.labels is not None
            self._label_counts = np.bincount(everything.labels, minlength=everything.choices.width)
        return self._splits

    def label_prior(self) -> np.ndarray:
        """Each class's share of the whole training file (add-one smoothed): the user's real class mix.

        The shots are sampled balanced per class, so a fitted bias learns a uniform prior; adding the
        log of this prior to the scores (``losses.apply_prior``) corrects the decision rule to the
        mix the user's data has. It is computed here and never leaves the client.
        """
        self._load()
        assert self._label_counts is not None
        counts = self._label_counts.astype(np.float64) + 1.0
        return counts / counts.sum()

    def _sample(self, everything: Examples, source: str) -> tuple[Examples, Examples]:
        assert everything.labels is not None
        rng = np.random.default_rng(self.seed)
        classes = range(len(self.choices)) if self.choices is not None else sorted(set(everything.labels))
        need = self.shots_per_class + self.dev_per_class
        train: list[int] = []
        dev: list[int] = []
        for label in classes:
            members = np.flatnonzero(everything.labels == label)
            if len(members) < need:
                name = self.class_names[label] if self.class_names else f"option {label}"
                raise TaskError(
                    f"data.train: class {name!r} has {len(members)} examples in {source}; needs {need} "
                    f"(shots_per_class {self.shots_per_class} + dev_per_class {self.dev_per_class})"
                )
            picked = rng.permutation(members)[:need]
            train.extend(picked[: self.shots_per_class])
            dev.extend(picked[self.shots_per_class :])
        return everything.take(rng.permutation(train)), everything.take(rng.permutation(dev))

    @property
    def train(self) -> Examples:
        return self._load()[0]

    @property
    def dev(self) -> Examples:
        return self._load()[1]

    @property
    def texts(self) -> tuple[str, ...]:
        """The k-shot training texts, templated and unlabelled: what may go to the server."""
        return self.train.texts

    @property
    def labels(self) -> np.ndarray:
        """Label indices of ``texts``; they stay on the client."""
        assert self.train.labels is not None
        return self.train.labels

    def holdout(self, fraction: float, seed: int = 0) -> Examples:
        """A seeded ``fraction`` of the training file's rows, disjoint from the shots and the dev split.

        For a task without a test file. Rows are taken in one seeded order of the whole file,
        skipping those sampled for train and dev, so runs with other shot seeds hold out nearly
        the same rows (and never one they tuned on).
        """
        if not 0 < fraction < 1:
            raise TaskError(f"--holdout takes a fraction between 0 and 1, got {fraction}")
        train, dev = self._load()
        everything = self.load_examples(Path(self.data.train), field="data.train")
        wanted = round(fraction * len(everything))
        used = set(train.rows) | set(dev.rows)
        order = np.random.default_rng(seed).permutation(len(everything))
        free = [int(index) for index in order if int(index) not in used]
        if wanted < 1 or wanted > len(free):
            raise TaskError(
                f"--holdout {fraction}: {wanted} of {len(everything)} rows wanted, {len(free)} are not shots "
                "or dev rows"
            )
        return everything.take(sorted(free[:wanted]))

    def test(self) -> Examples:
        """Every row of the test file (labels required)."""
        if self.data.test is None:
            raise TaskError(f"task {self.name!r} has no data.test file")
        return self.load_examples(Path(self.data.test), field="data.test")

    def with_seed(self, seed: int) -> Task:
        """The same task sampling its shots and dev split with another seed (``cbpt tune --seed``)."""
        if seed == self.seed:
            return self
        return type(self).model_validate({**self.model_dump(), "seed": seed})

    def format_only(self) -> TaskFormat:
        return TaskFormat.model_validate(self.format_spec())

    def metadata(self) -> dict[str, Any]:
        """What a result and task.json record about the task (no paths, no data)."""
        train, dev = self._load()
        return {
            "name": self.name,
            "format": self.format_spec(),
            "shots_per_class": self.shots_per_class,
            "dev_per_class": self.dev_per_class,
            "seed": self.seed,
            "train_file": Path(self.data.train).name,
            "train_sha256": self._train_sha256,
            "num_train": len(train),
            "num_dev": len(dev),
            "class_names": list(self.class_names) if self.class_names else None,
        }

    def fingerprint(self) -> str:
        """sha256 over the task's settings and its training data: resume refuses any change."""
        canonical = json.dumps(self.metadata(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _read_task_file(path: Path) -> dict[str, Any]:
    return read_mapping(path, what="task file", kinds=ANY_SETTINGS_FILE, error=TaskError)


def _first_problem(error: ValidationError) -> str:
    problems = error.errors()
    first = problems[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{location}: {message}{more}" if location else f"{message}{more}"
