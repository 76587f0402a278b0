"""Command line: python -m analysis {run, show, list, signals, plan, retrain, export}.

Every flag is optional; the defaults are the embedded MiniLM encoder and Rotten Tomatoes.
Errors are one sentence on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from analysis.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
NOT_YET = {"plan": "rank plans from a budget", "retrain": "retraining with a plan", "export": "figure export"}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one sentence like every other error."""

    def error(self, message: str):
        print(f"error: {message[0].upper()}{message[1:].rstrip('.')}; see '{self.prog} --help'.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    from analysis.context import RunSettings
    d = RunSettings()
    group = parser.add_argument_group("model and data")
    group.add_argument("--model", default=d.model, help="minilm (embedded encoder), smollm2 (embedded decoder), "
                       "a local model directory or a hub name (default: %(default)s)")
    group.add_argument("--data", default=d.data, help="rotten_tomatoes (embedded), a local .csv/.jsonl/.parquet "
                       "file or a hub dataset name (default: %(default)s)")
    group.add_argument("--text-column", default=d.text_column, help="text column of a local or hub dataset")
    group.add_argument("--label-column", default=d.label_column, help="label column (classification)")
    group.add_argument("--hub-split", default=d.hub_split, help="which split of a hub dataset to load")
    group.add_argument("--task", default=d.task, choices=["auto", "classification", "causal-lm"],
                       help="auto: classification for encoders, causal-lm for decoders")
    group.add_argument("--seed", type=int, default=d.seed, help="split and head-initialisation seed")
    group.add_argument("--val-size", type=int, default=d.val_size, help="validation examples used for importance")
    group.add_argument("--max-length", type=int, default=d.max_length, help="tokens per example (truncation)")
    group.add_argument("--batch-size", type=int, default=d.batch_size)
    group.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:N")
    group.add_argument("--dtype", default=d.dtype, help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16")
    parser.add_argument("--cache-dir", type=Path, default=None, help="results cache (default: ./cache or "
                        "$ANALYSIS_CACHE_DIR)")


def _settings(args):
    from analysis.context import RunSettings
    return RunSettings(model=args.model, data=args.data, text_column=args.text_column,
                       label_column=args.label_column, task=args.task, seed=args.seed, val_size=args.val_size,
                       max_length=args.max_length, batch_size=args.batch_size, device=args.device,
                       dtype=args.dtype, hub_split=args.hub_split)


def _overrides(pairs: list[str]) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        signal, _, key = name.partition(".")
        if not (signal and key and _):
            raise UserError(f"--set expects signal.option=value, not '{pair}'.")
        result.setdefault(signal, {})[key] = value
    return result


def _store(args):
    from analysis.store import Store
    return Store(args.cache_dir)


def cmd_run(args) -> int:
    from analysis.registry import all_signals
    from analysis.runner import parse_signal_list, run_signals
    names = args.signals or ",".join(all_signals())
    signals = parse_signal_list(names)
    overrides = _overrides(args.set)
    unknown = set(overrides) - {s.name for s in signals}
    if unknown:
        raise UserError(f"--set names signal(s) not being run: {', '.join(sorted(unknown))}.")
    started = time.time()
    results = run_signals(_settings(args), signals, overrides, _store(args), force=args.force)
    for signal, entry, computed in results:
        status = f"computed in {entry.meta.get('seconds', 0):.1f}s" if computed else "cached"
        print(f"{signal.name:14s} {status:22s} {len(entry.table())} rows  key {entry.key[:12]}")
    print(f"done in {time.time() - started:.1f}s; cache: {_store(args).root}")
    _write_job_result({"status": "done", "keys": {s.name: e.key for s, e, _ in results}})
    return 0


def cmd_show(args) -> int:
    import pandas as pd

    from analysis.registry import all_signals, get_signal
    from analysis.runner import find_entry
    store = _store(args)
    settings = _settings(args)
    signals = [get_signal(args.signal)] if args.signal else list(all_signals().values())
    frames = []
    for signal in signals:
        entry = find_entry(settings, signal, _overrides(args.set).get(signal.name), store)
        if entry is None:
            if args.signal:
                raise UserError(f"Signal '{signal.name}' has not been computed for this model and data yet; "
                                f"run: python -m analysis run --signals {signal.name}")
            continue
        if args.table not in entry.table_names:
            raise UserError(f"Signal '{signal.name}' has no table '{args.table}'; it has: "
                            f"{', '.join(entry.table_names)}.")
        frames.append(entry.table(args.table))
    if not frames:
        raise UserError("Nothing has been computed for this model and data yet; run: python -m analysis run")
    table = pd.concat(frames, ignore_index=True)
    sys.stdout.write(table.to_csv(index=False) if args.format == "csv" else table.to_json(orient="records") + "\n")
    return 0


def cmd_list(args) -> int:
    entries = _store(args).entries()
    if not entries:
        print("The cache is empty.")
    for entry in entries:
        meta = entry.meta
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created", 0)))
        print(f"{entry.key[:12]}  {when}  {meta.get('signal', '?'):14s} {meta.get('model', '?')} / "
              f"{meta.get('data', '?')}  ({meta.get('seconds', 0):.1f}s)")
    return 0


def cmd_signals(args) -> int:
    from analysis.registry import all_signals, config_help
    for signal in all_signals().values():
        print(f"{signal.name}: {signal.title}. {signal.description}")
        for name, default, text in config_help(signal):
            print(f"    --set {signal.name}.{name}={default}   {text}")
    return 0


def cmd_not_yet(args) -> int:
    raise UserError(f"'{args.verb}' ({NOT_YET[args.verb]}) is not yet available in this version.")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m analysis", description="Layer and rank importance for LoRA.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    run = verbs.add_parser("run", help="compute signals (cached) for a model and dataset")
    _settings_arguments(run)
    run.add_argument("--signals", default=None, help="comma-separated signal names (default: all)")
    run.add_argument("--set", action="append", metavar="SIGNAL.OPTION=VALUE", help="signal option (repeatable)")
    run.add_argument("--force", action="store_true", help="recompute even when cached")
    run.set_defaults(handler=cmd_run)
    show = verbs.add_parser("show", help="print a signal's tidy table from the cache")
    _settings_arguments(show)
    show.add_argument("--signal", default=None, help="signal name (default: every cached signal)")
    show.add_argument("--table", default="main", help="which of the signal's tables (default: main)")
    show.add_argument("--set", action="append", metavar="SIGNAL.OPTION=VALUE", help="signal option (repeatable)")
    show.add_argument("--format", choices=["csv", "json"], default="csv")
    show.set_defaults(handler=cmd_show)
    listing = verbs.add_parser("list", help="list cached results")
    listing.add_argument("--cache-dir", type=Path, default=None)
    listing.set_defaults(handler=cmd_list)
    verbs.add_parser("signals", help="list signals and their options").set_defaults(handler=cmd_signals)
    for verb, what in NOT_YET.items():
        verbs.add_parser(verb, help=f"{what} (not yet available)").set_defaults(handler=cmd_not_yet)
    return parser


def _write_job_result(value: dict) -> None:
    job_dir = os.environ.get("ANALYSIS_JOB_DIR")
    if job_dir:
        from analysis.progress import write_json_atomic
        write_json_atomic(Path(job_dir) / "result.json", {**value, "finished": time.time()})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb not in NOT_YET:  # the placeholder verbs take any flags, to say "not yet"
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except UserError as exc:
        message = str(exc)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        message, code = "Interrupted; nothing partial was written to the cache.", 130
    except Exception as exc:  # a bug: keep the traceback on disk, show one sentence
        from analysis.store import default_cache_dir
        log = default_cache_dir() / "logs" / f"error-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        message = f"Internal error ({type(exc).__name__}: {str(exc)[:200]}); the traceback is in {log}."
        code = EXIT_INTERNAL_ERROR
    print(f"error: {message}", file=sys.stderr)
    _write_job_result({"status": "failed", "message": message})
    return code


if __name__ == "__main__":
    sys.exit(main())
