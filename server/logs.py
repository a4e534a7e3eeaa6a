"""Structured server logging that cannot carry request text.

The formatter is the privacy boundary: it writes a fixed set of fields,
fills in a message's arguments only when they are numbers, accepts
``extra`` values only under whitelisted keys and only as numbers or short
identifiers, and reduces exceptions to their type and code locations (an
exception's message may quote a client's input; its frames cannot).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
import traceback
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

# The authenticated API key id of the call being served; set by the auth interceptor.
current_key_id: ContextVar[str | None] = ContextVar("cbpt_key_id", default=None)

# Keys a log call may pass through ``extra``; anything else is dropped.
ALLOWED_FIELDS = frozenset(
    {
        "method",
        "adapter",
        "generator",  # a shipped generator folder's name: the provider's own, never a client's
        "mode",
        "num_candidates",
        "num_examples",
        "num_choices",
        "tokens",
        "seconds",
        "code",
        "error_type",
        "field",
        "address",
        "tls",
        "mtls",
        "auth",
        "reflection",
        "model_id",
        "fingerprint",
        "grace_seconds",
        "retry_after",
        "request_bytes",
        "replicas",
        "reason",
        "stage",
        "steps",
        "num_calls",
        "cache_bytes",
        "text_cache_mb",
        "text_cache_mb_per_key",
        "job_state_mb",
        "score_decimals",
        "score_noise",
        "num_keys",
    }
)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:/\-\[\]]{1,128}")
_REDACTED = "<redacted>"
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def safe_value(value: object) -> object:
    """Numbers pass, short identifiers pass, every other value is redacted."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value):
        return value
    return _REDACTED


def safe_message(record: logging.LogRecord) -> str:
    """The message template with numeric arguments filled in and every other argument redacted.

    Identifiers worth logging go through ``extra`` under an allowed key instead.
    """
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    args = record.args
    if not args:
        return template
    try:
        if isinstance(args, dict):
            return template % {k: _numeric_or_redacted(v) for k, v in args.items()}
        return template % tuple(_numeric_or_redacted(v) for v in args)
    except (TypeError, ValueError, KeyError):
        return template


def _numeric_or_redacted(value: object) -> object:
    return value if isinstance(value, (bool, int, float)) else _REDACTED


def safe_exception(exc_info: tuple | None) -> str | None:
    """Exception type and frame locations only: never the exception's message."""
    if not exc_info or exc_info[0] is None:
        return None
    exc_type, _exc, tb = exc_info
    frames = traceback.extract_tb(tb)[-8:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames))
    return f"{exc_type.__name__} at {where}" if where else exc_type.__name__


def safe_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fixed fields of one log line, every one of them passed through the filters above."""
    fields: dict[str, object] = {
        "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "message": safe_message(record),
    }
    key_id = getattr(record, "key_id", None) or current_key_id.get()
    if key_id is not None:
        fields["key_id"] = safe_value(key_id)
    for name, value in record.__dict__.items():
        if name in ALLOWED_FIELDS and name not in _STANDARD_ATTRS:
            fields[name] = safe_value(value)
    exception = safe_exception(record.exc_info)
    if exception:
        fields["exception"] = exception
    return fields


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(safe_fields(record), separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for humans, with the same filtering."""

    def format(self, record: logging.LogRecord) -> str:
        fields = safe_fields(record)
        time, level, logger = fields.pop("time"), fields.pop("level"), fields.pop("logger")
        head = f"{time} {level:<7} {logger}: {fields.pop('message')}"
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} {tail}" if tail else head


# Libraries that give their loggers handlers of their own and stop them propagating, so their lines
# (a transformers warning, a Ray Serve replica's request log) would skip the formatter above.
LIBRARY_LOGGERS = ("transformers", "ray")


class LoggingSettings(BaseModel):
    """The ``logging`` section: how the front and every replica log (always through the privacy filter)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the least severe level logged"
    )
    log_json: bool = Field(False, description="one JSON object per line instead of text")

    def configure(self) -> None:
        configure_logging(self.log_level, self.log_json)


def configure_logging(level: str = "INFO", json_lines: bool = False, stream: TextIO | None = None) -> None:
    """Route every logger through one privacy-filtering handler on the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    route_library_loggers()


def route_library_loggers() -> None:
    """Send the libraries' loggers (``LIBRARY_LOGGERS`` and their children) to the root handler: their
    own handlers are removed and they propagate again. transformers adds its handler when it is first
    imported, so it is imported here and its own switches turn that handler off for good; Ray
    configures its loggers as it starts (``ray.init``, Serve), so the Ray backend calls this again
    once Serve runs, and each replica calls ``configure_logging`` as it starts."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
    names = [name for name in list(logging.root.manager.loggerDict) if _is_library(name)]
    for name in [*LIBRARY_LOGGERS, *names]:
        library = logging.getLogger(name)
        for old in list(library.handlers):
            library.removeHandler(old)
        library.propagate = True


def _is_library(name: str) -> bool:
    return any(name == library or name.startswith(f"{library}.") for library in LIBRARY_LOGGERS)
