"""The log formatters let sizes, timings and ids through, and nothing that could be request text."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cbpt.server.logs import JsonLineFormatter, TextFormatter, configure_logging, current_key_id

TEXT = "Review: my private words\nSentiment:"


def _record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("cbpt.test", logging.INFO, __file__, 1, msg, args or None, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_numbers_are_filled_in_and_strings_redacted() -> None:
    line = json.loads(JsonLineFormatter().format(_record("scored %d candidates on %s", 7, TEXT)))
    assert line["message"] == "scored 7 candidates on <redacted>"
    assert TEXT not in json.dumps(line)


def test_only_whitelisted_extras_and_only_safe_values() -> None:
    record = _record("evaluate", num_candidates=3, adapter="bbt", field="texts[2]", texts=[TEXT], tokens=TEXT)
    line = json.loads(JsonLineFormatter().format(record))
    assert line["num_candidates"] == 3 and line["adapter"] == "bbt" and line["field"] == "texts[2]"
    assert "texts" not in line  # not an allowed key
    assert line["tokens"] == "<redacted>"  # allowed key, but a value with spaces is not an identifier


def test_exception_is_type_and_location_only() -> None:
    try:
        raise ValueError(f"cannot tokenize {TEXT!r}")
    except ValueError as exc:
        error = exc
    text = TextFormatter().format(_record("evaluate failed", exc=error))
    assert "ValueError at test_logs.py:" in text
    assert "private" not in text


def test_key_id_comes_from_the_call_context() -> None:
    token = current_key_id.set("alice")
    try:
        line = json.loads(JsonLineFormatter().format(_record("evaluate")))
    finally:
        current_key_id.reset(token)
    assert line["key_id"] == "alice"


@pytest.mark.parametrize("json_lines", [True, False])
def test_configure_logging_routes_root_through_one_handler(json_lines: bool) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("DEBUG", json_lines=json_lines, stream=stream)
        logging.getLogger("cbpt.server.x").debug("seen %d", 1, extra={"seconds": 0.5})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    out = stream.getvalue()
    assert "seen 1" in out
    assert ('"seconds":0.5' in out) if json_lines else ("seconds=0.5" in out)


def test_library_loggers_are_routed_through_the_privacy_formatter() -> None:
    """Finding 10 of #22: transformers' and Ray's loggers have handlers of their own and do not
    propagate, so their lines skipped the formatter (a transformers warning quoting a text was written
    as is). transformers is the real library; the Ray logger is set up as Ray sets up its own."""
    from transformers.utils import logging as transformers_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    ray_stream, ours = io.StringIO(), io.StringIO()
    ray_serve = logging.getLogger("ray.serve")
    ray_serve.addHandler(logging.StreamHandler(ray_stream))  # as Ray's logging config does
    ray_serve.propagate = False
    transformers_logging.get_logger("transformers.tokenization_utils_base")  # its handler is now in place
    try:
        configure_logging("INFO", stream=ours)
        transformers_logging.get_logger("transformers.modeling_utils").warning("text was %s", TEXT)
        logging.getLogger("ray.serve.replica").warning("request %s", TEXT)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ray_serve.handlers.clear()
    out = ours.getvalue()
    assert "transformers.modeling_utils: text was <redacted>" in out
    assert "ray.serve.replica: request <redacted>" in out
    assert "private words" not in out and ray_stream.getvalue() == ""
    assert not logging.getLogger("transformers").handlers and logging.getLogger("transformers").propagate
