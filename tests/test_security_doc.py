"""docs/security.md names, for each threat, the test that checks it: every one of those tests exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    named = re.findall(r"`((?:client|server|engine)/test_\w+\.py|test_\w+\.py)((?:::\w+)?)`", text)
    continued = re.findall(r"`::(\w+)`", text)
    assert len(named) >= 20
    sources = {}
    for path, test in named:
        file = ROOT / "tests" / path
        assert file.is_file(), path
        sources[path] = file.read_text()
        if test:
            assert f"def {test[2:]}(" in sources[path], f"{path}{test}"
    everything = "\n".join(sources.values())
    for test in continued:
        assert f"def {test}(" in everything, test
