"""TunerSettings: checked once and by name, saved as JSON under the keys checkpoints have always used."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cbpt.client.errors import ConfigError, TunerWarning
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.settings import TunerSettings
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.tasks.task import Task
from tests.client.helpers import TaskFactory

# The keys of a checkpoint's config and of task.json's "settings", in the order earlier clients wrote them.
SAVED_KEYS = [
    "adapter",
    "optimizer",
    "budget",
    "popsize",
    "sigma0",
    "loss",
    "fit_bias",
    "select_on",
    "select_from",
    "dev_every",
    "patience",
    "seed",
]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "mse"}, "unknown loss 'mse'; known: ce, hinge, error"),
        ({"select_on": "f1"}, "unknown select_on 'f1'; known: accuracy, loss"),
        ({"select_from": "median"}, "unknown select_from 'median'; known: best, mean"),
        ({"popsize": 0}, "popsize must be at least 1, got 0"),
        ({"dev_every": 0}, "dev_every must be at least 1, got 0"),
        ({"patience": 0}, "patience must be at least 1, got 0"),
        ({"sigma0": 0.0}, "sigma0 must be positive, got 0.0"),
        ({"budget": 3, "popsize": 4}, "budget 3 is below one generation (popsize 4)"),
    ],
)
def test_each_check_names_its_setting(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TunerSettings(**changes)
    assert str(caught.value) == message
    with pytest.raises(ConfigError, match=r"must be|unknown|below"):
        TunerSettings().replace(**changes)  # a changed copy is checked too


def test_json_round_trip_keeps_the_saved_keys() -> None:
    settings = TunerSettings(
        adapter="bbt-cue",
        optimizer="ng:NGOpt",
        budget=40,
        popsize=8,
        sigma0=0.5,
        loss="hinge",
        fit_bias=True,
        select_on="loss",
        select_from="best",
        dev_every=2,
        patience=3,
        seed=7,
    )
    saved = settings.to_json()
    assert list(saved) == SAVED_KEYS == list(TunerSettings.names())
    assert TunerSettings.from_json(json.loads(json.dumps(saved))) == settings
    assert TunerSettings.from_json({"budget": 40}) == TunerSettings(budget=40)  # missing keys: defaults
    assert TunerSettings().generations == 10 and settings.generations == 5


def test_unknown_keys_load_with_a_warning_and_unknown_names_are_refused() -> None:
    with pytest.warns(TunerWarning, match="ignoring unknown tuner settings temperature"):
        loaded = TunerSettings.from_json({**TunerSettings(seed=2).to_json(), "temperature": 0.7})
    assert loaded == TunerSettings(seed=2)
    with pytest.raises(TypeError, match="unknown tuner setting 'buget'; known: adapter, optimizer"):
        TunerSettings().replace(buget=10)


def test_tuner_takes_settings_or_keyword_overrides(client: TuningClient, make_task: TaskFactory) -> None:
    task = Task.from_file(make_task())
    base = TunerSettings(adapter="cbp", budget=12, popsize=4, fit_bias=True)
    assert Tuner(client, task, settings=base).settings is base
    assert Tuner(client, task, adapter="cbp", budget=12, popsize=4, fit_bias=True).settings == base
    assert Tuner(client, task, settings=base, seed=3).settings == base.replace(seed=3)
    assert Tuner(client, task).settings == TunerSettings()
    with pytest.raises(ConfigError, match="below one generation"):
        Tuner(client, task, settings=base, budget=3)
    with pytest.raises(TypeError, match="unknown tuner setting 'budgt'"):
        Tuner(client, task, budgt=8)


def test_a_run_records_its_settings(client: TuningClient, make_task: TaskFactory) -> None:
    task = Task.from_file(make_task())
    settings = TunerSettings(adapter="bbt", budget=8, popsize=4, seed=1, sigma0=0.5)
    result = Tuner(client, task, settings=settings).run()
    assert result.settings == settings.to_json() and TunerSettings.from_json(result.settings) == settings
    assert result.adapter == "bbt" and result.optimizer == "cma" and result.calls_used == 8
