"""One reader of settings files for both sides: task files (client) and ``--config`` (server) read
YAML and TOML the same way, on every Python (``common/config_files.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cbpt.common.errors import TaskError
from cbpt.common.tasks.task import Task
from cbpt.server.errors import ConfigError
from cbpt.server.settings import ServerSettings


def test_both_sides_read_toml_through_one_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task, config = tmp_path / "task.toml", tmp_path / "server.toml"
    task.write_text('name = "t"\n')
    config.write_text("port = 1\n")
    for name in [name for name in os.environ if name.startswith("CBPT_")]:
        monkeypatch.delenv(name)
    assert ServerSettings(config=config).port == 1
    # Python 3.10 without tomli: one message, the same on both sides (each as its own error type).
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(TaskError, match=r"task file .*task\.toml: TOML needs Python 3\.11\+ \(or tomli"):
        Task.from_file(task)
    with pytest.raises(
        ConfigError, match=r"config file .*server\.toml: TOML needs Python 3\.11\+ \(or tomli"
    ):
        ServerSettings(config=config)


def test_both_sides_name_the_file_and_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("key: [unclosed\n")
    with pytest.raises(TaskError, match=r"task file .*broken\.yaml is not valid YAML"):
        Task.from_file(broken)
    with pytest.raises(ConfigError, match=r"config file .*broken\.yaml is not valid YAML"):
        ServerSettings(config=broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(TaskError, match="expected a mapping of settings"):
        Task.from_file(listed)
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        ServerSettings(config=listed)
