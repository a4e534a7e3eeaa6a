"""Per-tenant budgets of evaluations, per UTC day and in total: the provider's side of privacy.

The user's data never leaves the client, but every Evaluate answer tells the client something
about the provider's model; the number of answers is what bounds what a curious client can learn
(or extract). So each tenant (API key or client certificate) may have so many evaluations scored
a day and over its life, from its entry in the keys file or the server's defaults. The unit is
what the engine computes and answers: one **sequence**, a candidate on one example (on one choice,
in full-choice mode, where each choice is run), so 64 candidates on 512 texts cost 32768, not 64.
A call is charged when admitted and refunded if it is not answered; a refused call gets
``BudgetExhausted`` (RESOURCE_EXHAUSTED with a retry delay: until UTC midnight for the daily
budget, a day for a spent total).

Usage is kept in memory and, with ``usage_file``, in a small JSON file (written atomically at
most every ``save_every`` seconds and on close), so a restart does not reset the totals.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cbpt.common.files import write_atomic
from cbpt.server.errors import BudgetExhausted, ConfigError
from cbpt.server.front.keys import KeyStore

log = logging.getLogger(__name__)

TOTAL_RETRY_SECONDS = 86400.0  # a spent total budget renews only when the provider raises it


@dataclass
class Usage:
    day: str  # the UTC date ``today`` counts
    today: int = 0
    total: int = 0


class EvaluationBudgets:
    """Charges each call's sequences to its tenant; refuses beyond the tenant's daily or total budget."""

    def __init__(
        self,
        store: KeyStore | None,
        per_day: int | None = None,
        total: int | None = None,
        usage_file: Path | None = None,
        save_every: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._store = store
        self._per_day = per_day
        self._total = total
        self._file = usage_file
        self._save_every = save_every
        self._clock = clock
        self._usage: dict[str, Usage] = self._load()
        self._saved = time.monotonic()

    def charge(self, key_id: str | None, sequences: int) -> None:
        """Count the call's ``sequences`` against the tenant, or raise ``BudgetExhausted``
        leaving it uncounted."""
        if key_id is None:
            return  # no keys, no budgets (loopback development only)
        key = self._store.get(key_id) if self._store is not None else None
        per_day = key.evaluations_per_day if key and key.evaluations_per_day else self._per_day
        total = key.evaluations_total if key and key.evaluations_total else self._total
        if per_day is None and total is None:
            return
        now = self._clock()
        usage = self._today(key_id, now)
        if total is not None and usage.total + sequences > total:
            raise BudgetExhausted(
                f"key {key_id!r} has used {usage.total} of its {total} evaluations in total "
                f"(one per candidate and example; this call needs {sequences}); "
                "ask the provider to raise the budget",
                retry_after=TOTAL_RETRY_SECONDS,
            )
        if per_day is not None and usage.today + sequences > per_day:
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), timezone.utc)
            raise BudgetExhausted(
                f"key {key_id!r} has used {usage.today} of its {per_day} evaluations for today (one per "
                f"candidate and example; this call needs {sequences}); retry after midnight UTC",
                retry_after=max(1.0, (midnight - now).total_seconds()),
            )
        usage.today += sequences
        usage.total += sequences
        self._maybe_save()

    def refund(self, key_id: str | None, sequences: int) -> None:
        """Give back a charge for a call that was not answered (cancelled, refused, failed)."""
        usage = self._usage.get(key_id or "")
        if usage is None:
            return
        usage.today = max(0, usage.today - sequences)
        usage.total = max(0, usage.total - sequences)

    def used(self, key_id: str) -> Usage:
        return self._today(key_id, self._clock())

    def _today(self, key_id: str, now: datetime) -> Usage:
        day = now.date().isoformat()
        usage = self._usage.setdefault(key_id, Usage(day))
        if usage.day != day:
            usage.day, usage.today = day, 0
        return usage

    # -- persistence ------------------------------------------------------------------------------
    def save(self) -> None:
        if self._file is None:
            return
        data = {key_id: vars(usage) for key_id, usage in sorted(self._usage.items())}
        write_atomic(self._file, json.dumps({"usage": data}, indent=2) + "\n", mode=0o600)
        self._saved = time.monotonic()

    def _maybe_save(self) -> None:
        if self._file is not None and time.monotonic() - self._saved >= self._save_every:
            self.save()

    def _load(self) -> dict[str, Usage]:
        if self._file is None or not self._file.exists():
            return {}
        try:
            entries = json.loads(self._file.read_text(encoding="utf-8"))["usage"]
            return {str(key_id): Usage(**entry) for key_id, entry in entries.items()}
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Starting from zero would hand out the budgets again: refuse to start instead.
            raise ConfigError(f"usage file {self._file}: cannot be read ({type(error).__name__})") from None
