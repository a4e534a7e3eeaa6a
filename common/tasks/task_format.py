"""How a row becomes an unlabelled text and which choices the model scores: the task *format*.

A format is everything needed to score new files (it is what task.json keeps): the template,
the label field and the label -> choice mapping, or per-example options. ``Examples`` are rows
templated by it: texts, their ``Choices`` and, when known, label indices that stay on the client.
"""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cbpt.common.choices import Choices
from cbpt.common.errors import TaskError
from cbpt.common.tasks.loaders import Row, read_rows
from cbpt.common.tasks.scoring import ScoringMode


@dataclass(frozen=True)
class Examples:
    """Templated texts, their ``Choices`` (one shared list, or one per text) and, if known, labels."""

    texts: tuple[str, ...]
    labels: np.ndarray | None  # int64 [num_examples], an index into each example's choices
    choices: Choices
    rows: tuple[int, ...]  # row numbers in the source file (0-based)
    cue: str = ""  # the template's text after its last field, sent once per request
    # Where the field that ``truncate`` may shorten sits in each text: (start, end) characters.
    spans: tuple[tuple[int, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def wire_choices(self) -> Choices:
        """The choices as ``TuningClient.evaluate`` takes them (kept for callers of the earlier API)."""
        return self.choices

    @property
    def num_choices(self) -> int:
        return self.choices.width

    def take(self, indices: Sequence[int] | np.ndarray) -> Examples:
        indices = [int(i) for i in indices]
        return Examples(
            texts=tuple(self.texts[i] for i in indices),
            labels=None if self.labels is None else self.labels[indices],
            choices=self.choices.take(indices),
            rows=tuple(self.rows[i] for i in indices),
            cue=self.cue,
            spans=None if self.spans is None else tuple(self.spans[i] for i in indices),
        )


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a template uses, refusing positional, attribute and index fields."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"template {template!r} is malformed: {error}") from None
    names: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"template field {{{name}}} must be a plain field name such as {{text}}")
        if name not in names:
            names.append(name)
    return tuple(names)


def split_cue(template: str) -> tuple[str, str]:
    """Split a template into the per-example part and the answer cue after its last field.

    ``"Tweet: {text}\nSentiment:"`` gives ``("Tweet: {text}", "\nSentiment:")``. The
    server appends the cue to every text; adapters that place their soft prompt
    before the cue then let it encode each text once and reuse it for every candidate.
    """
    pieces = list(string.Formatter().parse(template))
    last_field = max((i for i, piece in enumerate(pieces) if piece[1] is not None), default=-1)
    cue = "".join(piece[0] for piece in pieces[last_field + 1 :])
    escaped = cue.replace("{", "{{").replace("}", "}}")
    return template[: len(template) - len(escaped)], cue


class Truncation(BaseModel):
    """How to fit a text longer than the server takes: shorten one field, never the answer cue.

    ``side: end`` cuts the field's end (keeps its start), ``side: start`` cuts its start.
    ``max_tokens`` caps the text below the server's ``max_text_tokens`` (which always applies).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str | None = None  # the template field to shorten; default: the template's only field
    side: Literal["end", "start"] = "end"
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        return {"side": raw} if isinstance(raw, str) else raw  # ``truncate: end``


class TaskFormat(BaseModel):
    """How rows become texts, choices and labels: everything needed to score new files (kept in task.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    text_fields: tuple[str, ...] = ()
    label_field: str = "label"
    choices: dict[str, str] | None = None  # label -> choice string, in class order
    options_field: str | None = None  # per-example options; the label is an index or the option text
    option_template: str = " {option}"
    mode: ScoringMode = ScoringMode.FIRST_TOKEN
    truncate: Truncation | None = None  # how to fit texts longer than the server takes

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        if "text_field" in raw:
            raw["text_fields"] = [raw.pop("text_field")]
        if isinstance(raw.get("text_fields"), str):
            raw["text_fields"] = [raw["text_fields"]]
        if raw.get("template") is None and raw.get("text_fields"):
            raw["template"] = "\n".join(f"{{{name}}}" for name in raw["text_fields"])
        if isinstance(raw.get("choices"), dict):
            if any(isinstance(label, bool) for label in raw["choices"]):
                raise ValueError(
                    'choices: a label read as true/false; quote YAML labels such as "yes" and "no"'
                )
            raw["choices"] = {str(label): choice for label, choice in raw["choices"].items()}
        return raw

    @model_validator(mode="after")
    def _check(self) -> TaskFormat:
        used = template_fields(self.template)
        if not used:
            raise ValueError(
                f"template {self.template!r} uses no field; e.g. 'Review: {{text}}\\nSentiment:'"
            )
        if self.text_fields and (extra := [name for name in used if name not in self.text_fields]):
            raise ValueError(
                f"template field {{{extra[0]}}} is not among text_fields {list(self.text_fields)}"
            )
        if self.label_field in used:
            raise ValueError(
                f"template uses the label field {{{self.label_field}}}; labels never leave the client"
            )
        object.__setattr__(self, "text_fields", used)
        if (self.choices is None) == (self.options_field is None):
            raise ValueError("give exactly one of choices (label -> choice string) or options_field")
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices: at least one label -> choice string is required")
            if empty := [label for label, choice in self.choices.items() if not choice]:
                raise ValueError(f"choices: label {empty[0]!r} has an empty choice string")
            if len(set(self.choices.values())) != len(self.choices):
                raise ValueError("choices: two labels map to the same choice string")
        if template_fields(self.option_template) != ("option",):
            raise ValueError("option_template must use exactly the field {option}, e.g. ' {option}'")
        if self.truncate is not None:
            self._check_truncation(self.truncate)
        return self

    def _check_truncation(self, truncate: Truncation) -> None:
        body_fields = [name for _, name, _, _ in string.Formatter().parse(self._body) if name is not None]
        if truncate.field is None:
            if len(set(body_fields)) != 1:
                raise ValueError(f"truncate: name the field to shorten (one of {', '.join(body_fields)})")
            object.__setattr__(self, "truncate", truncate.model_copy(update={"field": body_fields[0]}))
        elif body_fields.count(truncate.field) != 1:
            raise ValueError(
                f"truncate.field {truncate.field!r} must appear once in the template before the answer cue"
            )

    @property
    def _body(self) -> str:
        return split_cue(self.template)[0]

    @property
    def cue(self) -> str:
        return split_cue(self.template)[1]

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Label names in index order; None for per-example options."""
        return tuple(self.choices) if self.choices is not None else None

    def format_spec(self) -> dict[str, Any]:
        """This format alone, as JSON-ready data (what task.json keeps). ``truncate`` appears only
        when set, so a task without it keeps the fingerprint (and checkpoints) it always had."""
        spec = self.model_dump(mode="json", include=set(TaskFormat.model_fields))
        if spec.get("truncate") is None:
            spec.pop("truncate", None)
        return spec

    # -- rows -> examples ------------------------------------------------------------------------
    def _text(self, row: Row, where: str) -> tuple[str, tuple[int, int] | None]:
        """The templated text (without the cue) and the span of the field ``truncate`` may shorten."""
        values = {}
        for name in self.text_fields:
            if name not in row or row[name] is None:
                raise TaskError(
                    f"{where}: missing field {name!r} used by the template (fields: {', '.join(row)})"
                )
            values[name] = row[name]
        if self.truncate is None:
            return self._body.format_map(values), None
        pieces: list[str] = []
        span = (0, 0)
        for literal, field, spec, conversion in string.Formatter().parse(self._body):
            pieces.append(literal)
            if field is None:
                continue
            replacement = (
                "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
            value = replacement.format_map(values)
            if field == self.truncate.field:
                start = sum(map(len, pieces))
                span = (start, start + len(value))
            pieces.append(value)
        return "".join(pieces), span

    def _options(self, row: Row, where: str) -> tuple[str, ...]:
        """The row's raw options (a list, or a JSON list inside a CSV cell)."""
        value = row.get(self.options_field) if self.options_field else None
        if isinstance(value, str) and value.lstrip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if not isinstance(value, list) or not value:
            raise TaskError(f"{where}: field {self.options_field!r} must be a non-empty list of options")
        return tuple(str(option) for option in value)

    def _label(self, row: Row, where: str, options: tuple[str, ...] | None) -> int:
        if self.label_field not in row or row[self.label_field] in (None, ""):
            raise TaskError(f"{where}: missing label field {self.label_field!r} (fields: {', '.join(row)})")
        value = row[self.label_field]
        if self.choices is not None:
            names = list(self.choices)
            if str(value) not in self.choices:
                raise TaskError(f"{where}: unknown label {value!r}; known: {', '.join(names)}")
            return names.index(str(value))
        assert options is not None
        if str(value) in options:
            return options.index(str(value))
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            index = int(value)
            if not 0 <= index < len(options):
                raise TaskError(f"{where}: label index {index} is out of range for {len(options)} options")
            return index
        raise TaskError(f"{where}: label {value!r} is neither an option index nor one of the options")

    def examples(self, rows: Sequence[Row], source: str, *, require_labels: bool = True) -> Examples:
        """Template every row; labels are read (and required) only when ``require_labels``."""
        texts, options_lists, labels, spans = [], [], [], []
        has_labels = require_labels
        for number, row in enumerate(rows):
            where = f"{source} row {number + 1}"
            text, span = self._text(row, where)
            texts.append(text)
            if span is not None:
                spans.append(span)
            options = self._options(row, where) if self.options_field else None
            if options is not None:
                options_lists.append(tuple(self.option_template.format(option=o) for o in options))
            if has_labels:
                labels.append(self._label(row, where, options))
        return Examples(
            texts=tuple(texts),
            labels=np.asarray(labels, dtype=np.int64) if has_labels else None,
            choices=(
                Choices.shared_by_all(tuple(self.choices.values()))
                if self.choices is not None
                else Choices.per_example(options_lists)
            ),
            rows=tuple(range(len(rows))),
            cue=self.cue,
            spans=tuple(spans) if self.truncate is not None else None,
        )

    def load_examples(self, path: Path, *, require_labels: bool = True, field: str = "data") -> Examples:
        return self.examples(read_rows(Path(path), field), str(path), require_labels=require_labels)
