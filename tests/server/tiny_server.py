"""A real server process on the tiny model, for signal, restart, load and memory tests.

``python -m tests.server.tiny_server [--port P] [--grace G] [--keys FILE] ...`` serves with the
same ``serve()`` the CLI runs (signal handling included). ``--pass-seconds S`` slows every forward
pass (and logs it, so a test can see the engine work) for calls that must last long enough to be
interrupted; ``--batch-sequences`` sets the chunk size (1: one row per pass). The adapters are the
defaults (none, bbt, bbt-suffix, bbt-cue) at dimension 16. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from pathlib import Path

from cbpt.common.limits import Limits
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import serve
from cbpt.server.logs import configure_logging
from cbpt.server.settings import ServerSettings
from cbpt.server.testing import tiny_bundle

log = logging.getLogger("tiny_server")
LIMITS = Limits(
    max_candidates=8,
    max_examples=16,
    max_choices=4,
    max_text_tokens=48,
    max_text_chars=300,
    max_choice_tokens=4,
    max_sequences=128,
    max_message_bytes=64 * 1024,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--pass-seconds", type=float, default=0.02)
    parser.add_argument("--batch-sequences", type=int, default=1)
    parser.add_argument("--keys", type=Path, default=None)
    parser.add_argument("--keys-reload", type=float, default=5.0)
    parser.add_argument("--max-queued", type=int, default=64)
    args = parser.parse_args()
    configure_logging("INFO", json_lines=True)
    bundle = tiny_bundle(0)
    adapters = ServedAdapters(bbt_dimension=16, prompt_length=4, shipped_generators=False).build(bundle)
    engine = ScoringEngine(bundle, adapters, LIMITS, batch_sequences=args.batch_sequences)
    if args.pass_seconds > 0:
        passes = itertools.count(1)

        def slow_pass(*_: object) -> None:
            time.sleep(args.pass_seconds)
            log.info("forward pass", extra={"steps": next(passes)})

        engine.bundle.model.base_model.register_forward_hook(slow_pass)
    settings = ServerSettings.from_flags(
        host="127.0.0.1",
        port=args.port,
        insecure=True,
        allow_no_auth=args.keys is None,
        api_keys_file=args.keys,
        grace_seconds=args.grace,
        keys_reload_seconds=args.keys_reload,
        max_queued_requests=args.max_queued,
        merge_window_ms=0,
    )
    asyncio.run(serve(engine, settings))


if __name__ == "__main__":
    main()
