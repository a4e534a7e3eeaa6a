"""Task files, loaders, templating, k-shot sampling and the errors a user can fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbpt.client.errors import TaskError
from cbpt.common.choices import Choices
from cbpt.common.registry import DuplicateName
from cbpt.common.tasks.loaders import LOADERS, register_loader
from cbpt.common.tasks.task import Task, TaskFormat
from tests.client.helpers import LABELS, TaskFactory, labelled_rows, write_jsonl


def test_yaml_task_with_relative_paths(make_task: TaskFactory, tmp_path: Path, monkeypatch) -> None:
    path = make_task()
    monkeypatch.chdir(tmp_path)  # the data paths resolve against the task file, not the working folder
    task = Task.from_file(path)
    assert len(task.texts) == 8 and len(task.dev) == 4
    assert all(text.startswith("Review: ") and "Sentiment" not in text for text in task.texts)
    assert task.train.cue == task.dev.cue == "\nSentiment:"
    assert not any("LABEL_SECRET" in text for text in task.texts + task.dev.texts)
    assert task.labels.dtype == np.int64 and sorted(np.bincount(task.labels).tolist()) == [4, 4]
    assert task.train.choices == Choices.shared_by_all(list(LABELS.values()))
    assert len(task.test()) == 8


def test_sampling_is_seeded_stratified_and_disjoint(make_task: TaskFactory) -> None:
    path = make_task(shots=3, dev=2)
    first, again = Task.from_file(path), Task.from_file(path)
    assert first.texts == again.texts and first.dev.texts == again.dev.texts
    assert not set(first.train.rows) & set(first.dev.rows)
    assert np.bincount(first.dev.labels).tolist() == [2, 2]
    reseeded = Task.from_dict({**first.model_dump(), "seed": 1})
    assert reseeded.texts != first.texts


def test_toml_and_json_task_files(make_task: TaskFactory) -> None:
    json_task = Task.from_file(make_task("task.json"))
    toml = json_task.model_dump(mode="json")
    lines = [f'name = "{toml["name"]}"', f"template = {json.dumps(toml['template'])}", "shots_per_class = 4"]
    lines += ["dev_per_class = 2", "[data]", 'train = "data/train.jsonl"', "[choices]"]
    lines += [f'{label} = "{choice}"' for label, choice in LABELS.items()]
    toml_path = make_task("task.toml")
    toml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert Task.from_file(toml_path).texts == json_task.texts


def test_csv_data_and_several_text_fields(tmp_path: Path) -> None:
    csv_path = tmp_path / "qa.csv"
    rows = ["question,context,answer"] + [f"q{i}?,ctx {i},{'yes' if i % 2 else 'no'}" for i in range(10)]
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = Task.from_dict(
        {
            "name": "qa",
            "data": {"train": str(csv_path)},
            "template": "Q: {question}\nC: {context}\nA:",
            "label_field": "answer",
            "choices": {"yes": " yes", "no": " no"},
            "shots_per_class": 2,
            "dev_per_class": 1,
        }
    )
    assert task.text_fields == ("question", "context")
    assert all(text.startswith("Q: q") and "\nC: ctx " in text for text in task.texts)


def test_per_example_options(tmp_path: Path) -> None:
    rows = []
    for i in range(8):
        options = [f"red {i}", f"green {i}", f"blue {i}"]
        label = i % 3 if i % 2 else options[i % 3]  # an index or the option's text
        rows.append({"question": f"colour {i}?", "options": options, "answer": label})
    path = write_jsonl(tmp_path / "mc.jsonl", rows)
    fmt = TaskFormat(template="{question}", options_field="options", label_field="answer")
    examples = fmt.load_examples(path)
    assert not examples.choices.shared and examples.choices.of_example(0) == (" red 0", " green 0", " blue 0")
    assert examples.take([3, 1]).choices.lists == (examples.choices.lists[3], examples.choices.lists[1])
    assert examples.labels.tolist() == [i % 3 for i in range(8)]


def _error(make_task: TaskFactory, **kwargs) -> str:
    with pytest.raises(TaskError) as caught:
        Task.from_file(make_task(**kwargs)).texts  # noqa: B018 - loading is lazy
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_errors_name_what_to_fix(make_task: TaskFactory, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="task file not found"):
        Task.from_file(tmp_path / "nope.yaml")
    assert "data.train: file not found" in _error(make_task, data={"train": "missing.jsonl"})
    assert "missing field 'review'" in _error(make_task, template="Review: {review}\nSentiment:")
    assert "unknown label 'LABEL_SECRET_C'" in _error(
        make_task, rows=[*labelled_rows(8), {"text": "meh", "label": "LABEL_SECRET_C"}]
    )
    assert "needs 30 (shots_per_class 20" in _error(make_task, shots=20, dev=10)
    assert "plain field name" in _error(make_task, template="Review: {0}")
    assert "plain field name" in _error(make_task, template="Review: {text.upper}")
    assert "labels never leave the client" in _error(make_task, template="{text} {label}")
    assert "choices" in _error(make_task, choices=None)
    assert "shots_per_class" in _error(make_task, shots=0)
    assert "unknown data format '.xlsx'" in _error(make_task, data={"train": "data/train.xlsx"})
    assert "missing label field 'label'" in _error(make_task, rows=[{"text": "no label here"}] * 20)
    bad = make_task()
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(TaskError, match="not valid YAML"):
        Task.from_file(bad)
    assert "extra" in _error(make_task, colour="blue").lower()


def test_loader_registry_refuses_duplicates() -> None:
    with pytest.raises(DuplicateName, match=r"data format '\.jsonl' is already registered"):
        register_loader(".jsonl")(lambda path: [])
    with pytest.raises(DuplicateName, match=r"'\.json'"):
        register_loader(".never-seen", ".json")(lambda path: [])
    assert ".never-seen" not in LOADERS  # refused as a whole, not half registered


def test_fingerprint_changes_with_data_and_settings(make_task: TaskFactory) -> None:
    path = make_task()
    base = Task.from_file(path).fingerprint()
    assert Task.from_file(path).fingerprint() == base
    assert Task.from_dict({**Task.from_file(path).model_dump(), "seed": 5}).fingerprint() != base
    write_jsonl(path.parent / "data" / "train.jsonl", labelled_rows(13))
    assert Task.from_file(path).fingerprint() != base


def test_unquoted_yaml_booleans_are_explained(make_task: TaskFactory) -> None:
    path = make_task()
    path.write_text(path.read_text().replace("LABEL_SECRET_A:", "yes:"), encoding="utf-8")
    with pytest.raises(TaskError, match='quote YAML labels such as "yes"'):
        Task.from_file(path)


@pytest.mark.parametrize("name", ["sst2", "financial_phrasebank", "pubmedqa"])
def test_bundled_example_tasks_load(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "client" / "tasks" / f"{name}.yaml"
    task = Task.from_file(path)
    if not Path(task.data.train).is_file():
        pytest.skip(f"shared dataset {task.data.train} is not beside the repository")
    assert len(task.texts) == 16 * len(task.class_names) and len(task.dev) == 8 * len(task.class_names)


def test_template_cue_is_split_after_the_last_field():
    from cbpt.common.tasks.task import split_cue

    assert split_cue("Tweet: {text}\nSentiment:") == ("Tweet: {text}", "\nSentiment:")
    assert split_cue("{question}\n{context}") == ("{question}\n{context}", "")
    assert split_cue("Q: {q} {{braces}} A:") == ("Q: {q}", " {braces} A:")
    body, cue = split_cue("Q: {q} {{braces}} A:")
    assert body.format(q="x") + cue == "Q: {q} {{braces}} A:".format(q="x")


def test_label_prior_is_the_training_files_class_mix(make_task) -> None:
    from tests.client.helpers import LABELS, labelled_rows

    rows = labelled_rows(12)
    rows += [dict(rows[0]) for _ in range(12)]  # twelve more of the first row's class
    task = Task.from_file(make_task(rows=rows))
    prior = task.label_prior()
    first = list(dict(LABELS)).index(rows[0]["label"])
    assert prior.sum() == pytest.approx(1.0)
    assert prior[first] > prior[1 - first]
    counts = [sum(row["label"] == label for row in rows) + 1 for label in dict(LABELS)]
    assert prior.tolist() == pytest.approx([count / sum(counts) for count in counts])
