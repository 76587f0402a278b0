"""Command line: python -m analysis {run, show, list, signals, plan, retrain, compare, export}.

Every flag is optional; the defaults are the embedded MiniLM encoder and Rotten Tomatoes.
Errors are one sentence on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from analysis.errors import UserError, quoted, shorten

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class Renamed(argparse.Action):
    """A flag that now has another name: one sentence saying which, rather than a value taken for something else."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.const}")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one sentence like every other error."""

    def error(self, message: str):
        print(f"error: {message[0].upper()}{message[1:].rstrip('.')}; see '{self.prog} --help'.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    from analysis.settings import RunSettings, add_flags
    add_flags(parser.add_argument_group("model and data"), RunSettings)
    parser.add_argument("--cache-dir", type=Path, default=None, help="results cache (default: ./cache or "
                        "$ANALYSIS_CACHE_DIR)")


def _settings(args):
    from analysis.model.sources.data import EMBEDDED
    from analysis.settings import RunSettings, flag_of, from_args
    settings = from_args(RunSettings, args)
    if settings.data == EMBEDDED:   # its columns and split are fixed: say so rather than ignore the flags
        defaults = RunSettings()
        ignored = [flag_of(f) for f in dataclasses.fields(RunSettings)
                   if f.name in ("text_column", "label_column", "hub_split")
                   and getattr(settings, f.name) != getattr(defaults, f.name)]
        if ignored:
            print(f"warning: {', '.join(ignored)} apply only to CSV, parquet or hub data; the embedded "
                  f"'{EMBEDDED}' dataset ignores them.", file=sys.stderr)
    return settings


def _overrides(pairs: list[str]) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        signal, _, key = name.partition(".")
        if not (signal and key and _):
            raise UserError(f"--set expects signal.option=value, not '{pair}'.")
        result.setdefault(signal, {})[key] = value
    return result


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_folder(path: Path) -> None:
    """A folder the command writes into (or creates): neither it nor a folder above it may be a file."""
    found = _existing_ancestor(path)
    if not found.is_dir():
        raise UserError(f"'{found}' is a file, not a folder.")


def _check_file(path: Path) -> None:
    """A file the command writes: not a folder, and in a folder that is one (or can be created)."""
    if Path(path).expanduser().is_dir():
        raise UserError(f"'{path}' is a folder; give a file name.")
    _check_folder(Path(path).expanduser().parent)


def _check_paths(args) -> None:
    """Every path a command writes, checked once before any work: the cache (the store checks its folder when
    opened), and --out (a file for plan and export, a folder for retrain and compare)."""
    if "cache_dir" in args:
        _store(args)
    out = getattr(args, "out", None)
    if out is not None:
        (_check_folder if args.verb in ("retrain", "compare") else _check_file)(out)


def _check_set(overrides: dict, used: set[str], what: str) -> None:
    """--set may only name signals the command uses (a typo or a stray option is not silently ignored)."""
    unknown = set(overrides) - used
    if unknown:
        raise UserError(f"--set names signal(s) {what}: {', '.join(sorted(unknown))}.")


def _method_signals(methods: list[str]) -> set[str]:
    """The signals that methods (signal names, blends, 'uniform', a module baseline such as 'uniform-mlp') use,
    each method checked as it is written."""
    from analysis.planning.baselines import baseline_family
    from analysis.planning.methods import UNIFORM, blend_parts
    return {name for method in methods if method != UNIFORM and not baseline_family(method)
            for name, _ in blend_parts(method)}


def _store(args):
    from analysis.store.cache import Store
    return Store(args.cache_dir)


def cmd_run(args) -> int:
    from analysis.signals import parallel
    from analysis.signals.registry import all_signals
    from analysis.signals.runner import parse_signal_list, run_signals
    names = args.signals if args.signals is not None else ",".join(all_signals())
    signals = parse_signal_list(names)
    overrides = _overrides(args.set)
    _check_set(overrides, {s.name for s in signals}, "not being run")
    started = time.time()
    results = run_signals(_settings(args), signals, overrides, _store(args), force=args.force)
    main = parallel.is_main()
    parallel.stop()
    if not main:   # another process of a data-parallel launch: the main one reports
        return 0
    for signal, entry, computed in results:
        status = f"computed in {entry.meta.get('seconds', 0):.1f}s" if computed else "cached"
        print(f"{signal.name:14s} {status:22s} {len(entry.table())} rows  key {entry.key[:12]}")
    print(f"done in {time.time() - started:.1f}s; cache: {_store(args).root}")
    _write_job_result({"status": "done", "keys": {s.name: e.key for s, e, _ in results}})
    return 0


def cmd_show(args) -> int:
    import pandas as pd

    from analysis.signals.context import identify
    from analysis.signals.registry import all_signals, get_signal, make_config
    from analysis.signals.runner import not_computed
    from analysis.store.lookups import find_entry
    settings = _settings(args)
    signals = [get_signal(args.signal)] if args.signal else list(all_signals().values())
    overrides = _overrides(args.set)
    _check_set(overrides, {s.name for s in signals}, "not being shown")
    configs = {name: make_config(get_signal(name), options) for name, options in overrides.items()}
    run = identify(settings, _store(args))
    frames = []
    for signal in signals:
        entry = find_entry(run, signal, configs.get(signal.name))
        if entry is None:
            if args.signal:
                raise UserError(not_computed(signal.name, overrides.get(signal.name)))
            continue
        if args.table not in entry.table_names:
            raise UserError(f"Signal '{signal.name}' has no table '{args.table}'; it has: "
                            f"{', '.join(entry.table_names)}.")
        frames.append(entry.table(args.table))
    if not frames:
        raise UserError("Nothing has been computed for this model and data yet; run: python -m analysis run.")
    table = pd.concat(frames, ignore_index=True)
    sys.stdout.write(table.to_csv(index=False) if args.format == "csv" else table.to_json(orient="records") + "\n")
    return 0


def cmd_list(args) -> int:
    from analysis.contract.run import when
    entries = _store(args).entries()
    if not entries:
        print("The cache is empty.")
    for entry in entries:
        meta = entry.meta
        print(f"{entry.key[:12]}  {when(meta.get('created', 0))}  {meta.get('signal') or entry.kind:14s} "
              f"{meta.get('model', '?')} / {meta.get('data', '?')}  ({meta.get('seconds', 0):.1f}s)")
    return 0


def cmd_signals(args) -> int:
    from analysis.settings import flag_of
    from analysis.signals.registry import all_signals, config_help
    for signal in all_signals().values():
        print(f"{signal.name}: {signal.title}. {signal.description}")
        for name, default, text in config_help(signal):
            print(f"    --set {signal.name}.{name}={default}   {text}")
        if signal.plan is not None and signal.plan.limits is not None:
            for f in dataclasses.fields(signal.plan.limits):
                print(f"    {flag_of(f)} {f.default}   (plan, compare, export) {f.metadata['help']}")
        if signal.start is not None:
            print(f"    --init {signal.name}   (retrain, compare) the adapter's start: {signal.start.help}")
    return 0


def _limits(args):
    from analysis.settings import Limits, from_args
    return from_args(Limits, args)


def _signal_limits(args) -> tuple:
    """The limits of the signals' own plan rules as given (CKA's --block-rank, GoRA's --gora-min-rank, ...)."""
    from analysis.settings import from_args
    from analysis.signals.registry import signal_limits
    return tuple(from_args(limits, args) for limits in signal_limits())


def _plan_options(args):
    from analysis.settings import PlanOptions, from_args
    return from_args(PlanOptions, args)


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    from analysis.settings import Limits, PlanOptions, add_flags
    from analysis.signals.registry import signal_limits
    group = parser.add_argument_group("budget and limits")
    group.add_argument("--budget", default="r4", help="trainable LoRA parameters (150000, 150k, 1.2M) or an "
                       "average rank (r4: what uniform rank 4 costs) (default: %(default)s)")
    add_flags(group, Limits)
    for limits in signal_limits():   # a signal's own plan rule may take limits of its own
        add_flags(group, limits)
    add_flags(parser.add_argument_group("alpha and dropout"), PlanOptions)
    parser.add_argument("--set", action="append", metavar="SIGNAL.OPTION=VALUE",
                        help="which cached variant of a signal to plan from (default: the newest)")


def cmd_plan(args) -> int:
    from analysis.signals.context import identify
    from analysis.planning.plan_json import plan_name, write_plan
    from analysis.planning.methods import make_plan
    limits, options, overrides = _limits(args), _plan_options(args), _overrides(args.set)   # checked first
    own = _signal_limits(args)
    _check_set(overrides, _method_signals([args.signal]), f"that '{args.signal}' does not use")
    plan = make_plan(identify(_settings(args), _store(args)), args.signal, args.budget, limits, options, overrides,
                     signal_limits=own)
    for warning in plan["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    write_plan(plan, args.out)
    ranks = sorted(set([plan["r"], *plan["rank_pattern"].values()]))
    print(f"{plan_name(plan)}: {plan['trainable_params']:,} of {plan['budget']:,} parameters, "
          f"{len(plan['target_modules'])} modules, ranks {ranks[0]}..{ranks[-1]}; wrote {args.out}")
    return 0


def _compare_settings(args):
    from analysis.settings import CompareSettings, from_args
    return from_args(CompareSettings, args)


def _retrain_config(args, **fixed):
    from analysis.settings import TrainSettings, from_args
    return from_args(TrainSettings, args, prefix="train_", **fixed)


def _retrain_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    from analysis.settings import TrainSettings, add_flags
    add_flags(parser.add_argument_group("training"), TrainSettings, prefix="train_", exclude=exclude)


def cmd_retrain(args) -> int:
    from analysis.planning.plan_json import plan_name, read_plan
    from analysis.training.retrain import retrain, write_outputs
    from analysis.settings import check_device
    config = _retrain_config(args)   # checked before the plan is read
    if args.device is not None:
        check_device(args.device)
    plan = read_plan(args.plan)
    entry = retrain(plan, config, _store(args), args.device)
    if entry is None:  # a non-main process under accelerate launch
        return 0
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in entry.meta["metrics"].items())
    print(f"{plan_name(plan)}: {metrics} ({entry.meta['train_seconds']:.1f}s training)")
    if args.out:
        write_outputs(entry, args.out)
        print(f"wrote {args.out / 'metrics.json'}")
    _write_job_result({"status": "done", "keys": {"retrain": entry.key}})
    return 0


def cmd_compare(args) -> int:
    from analysis.reporting.comparison_tables import formatted, markdown, savings_table
    from analysis.training.compare import compare
    from analysis.training.savings import RESAMPLES, savings
    from analysis.signals.context import identify
    from analysis.signals.registry import all_signals
    settings, chosen = _settings(args), _compare_settings(args)
    if args.signals is not None:
        methods = [m.strip() for m in args.signals.split(",") if m.strip()]
        if not methods:
            raise UserError(f"--signals names no method ({quoted(args.signals)}); give comma-separated signal "
                            "names or blends, or leave it out to compare every cached signal.")
    else:  # every signal already computed for this setting
        cached = identify(settings, _store(args)).entries
        methods = [name for name in all_signals() if name in cached]
    chosen = dataclasses.replace(chosen, budgets=chosen.budgets or (args.budget,))   # one budget: --budget
    overrides = _overrides(args.set)
    _check_set(overrides, _method_signals(methods), "that no compared method uses")
    entry = compare(settings, methods, chosen, _retrain_config(args), _limits(args), _plan_options(args),
                    _store(args), overrides=overrides, signal_limits=_signal_limits(args))
    from analysis.signals import parallel
    main = parallel.is_main()
    parallel.stop()
    if not main:   # another process of a launch: the main one reports
        return 0
    task = entry.meta["task"]
    table, saved = formatted(entry.table(), task), savings(entry.table("runs"), task)
    text = markdown(table)
    if len(saved):
        text += (f"\n\nParameters each method needs to reach uniform LoRA at its largest budget (read off its budget "
                 f"curve; interval: {RESAMPLES} bootstrap resamples of the seeds):\n\n"
                 + markdown(savings_table(saved, task)))
    print(text)
    left_out = entry.meta.get("left_out", 0)
    if left_out:
        print(f"{left_out} run(s) did not train and are left out of the means (see runs.csv).")
    if args.out:
        from analysis.reporting.comparison_tables import budget_table, curve_points, pareto_points
        args.out.mkdir(parents=True, exist_ok=True)
        entry.table().to_csv(args.out / "summary.csv", index=False)
        table.to_csv(args.out / "table.csv", index=False)
        (args.out / "table.md").write_text(text + "\n")
        entry.table("runs").to_csv(args.out / "runs.csv", index=False)
        if "tuning" in entry.table_names:
            entry.table("tuning").to_csv(args.out / "tuning.csv", index=False)
        budget_table(entry.table(), task).to_csv(args.out / "budgets.csv", index=False)
        curve_points(entry.table(), task).to_csv(args.out / "curve.csv", index=False)
        saved.to_csv(args.out / "savings.csv", index=False)
        pareto_points(entry.table(), task).to_csv(args.out / "pareto.csv", index=False)
        print(f"wrote summary.csv, table.csv, table.md, runs.csv, budgets.csv, curve.csv, savings.csv, pareto.csv"
              f"{', tuning.csv' if 'tuning' in entry.table_names else ''} to {args.out}")
    _write_job_result({"status": "done", "keys": {"comparison": entry.key}})
    return 0


def cmd_export(args) -> int:
    from analysis.signals.context import identify
    from analysis.reporting.exhibits import exhibits_for, render
    from analysis.contract.atomic import write_bytes_atomic
    from analysis.signals.registry import all_signals
    limits, own, overrides = _limits(args), _signal_limits(args), _overrides(args.set)   # checked first
    used = {"all": set(), "comparison": set(), "plans": set(all_signals())}.get(args.signal)
    _check_set(overrides, _method_signals([args.signal]) if used is None else used,
               f"that exporting '{args.signal}' does not use")
    if not args.list and args.out is None:
        raise UserError("Name the file to write with --out, e.g. --out figure.pdf.")
    if not args.list and not args.out.parent.is_dir():
        raise UserError(f"The folder '{args.out.parent}' does not exist; create it or choose another --out.")
    found = exhibits_for(identify(_settings(args), _store(args)), args.signal, args.budget, limits, overrides, own)
    if args.list:
        for exhibit in found:
            kind = "figure" if exhibit.figure else "table"
            print(f"{exhibit.name:28s} {kind:7s} {exhibit.title}")
        return 0
    chosen = next((e for e in found if e.name == args.figure), None) if args.figure else found[0]
    if chosen is None:
        raise UserError(f"'{args.signal}' has no figure '{args.figure}'; it has: {', '.join(e.name for e in found)}.")
    fmt = args.format or args.out.suffix.lstrip(".").lower()
    write_bytes_atomic(args.out, render(chosen, fmt, args.width, args.grayscale))
    print(f"wrote {chosen.name} ({chosen.title}) to {args.out}")
    return 0


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
    plan = verbs.add_parser("plan", help="a rank plan (peft LoraConfig JSON) from a signal and a budget")
    _settings_arguments(plan)
    plan.add_argument("--signal", default="uniform", help="uniform, a signal name, a blend such as "
                      "'0.7*shapley+0.3*cka', or uniform LoRA on one module family: uniform-attention, uniform-mlp, "
                      "uniform-all (default: %(default)s)")
    _plan_arguments(plan)
    plan.add_argument("--out", type=Path, default=Path("plan.json"), help="where to write (default: %(default)s)")
    plan.set_defaults(handler=cmd_plan)
    retrain = verbs.add_parser("retrain", help="train a plan from scratch on train, evaluate on test")
    retrain.add_argument("--plan", type=Path, required=True, help="a plan JSON from 'plan'")
    retrain.add_argument("--out", type=Path, default=None, help="also write metrics.json, curve.csv, plan.json and "
                         "adapter/ here")
    retrain.add_argument("--device", default=None, help="override the plan's device (auto, cpu, cuda, cuda:N)")
    retrain.add_argument("--cache-dir", type=Path, default=None)
    _retrain_arguments(retrain)
    retrain.add_argument("--seed", action=Renamed, help=argparse.SUPPRESS, const="is the run's split seed, which the "
                         "plan fixes; retrain's training seed is --train-seed")
    retrain.set_defaults(handler=cmd_retrain)
    comparison = verbs.add_parser("compare", help="retrain uniform LoRA and each method's plan at one or more "
                                  "budgets, with several seeds and learning rates tuned on validation")
    _settings_arguments(comparison)
    comparison.add_argument("--signals", default=None, help="comma-separated methods (signal names or blends); "
                            "default: every signal cached for this setting")
    from analysis.settings import CompareSettings, add_flags
    add_flags(comparison.add_argument_group("seeds, budgets, rates and baselines"), CompareSettings)
    comparison.add_argument("--out", type=Path, default=None, help="also write summary.csv, table.csv, table.md, "
                            "runs.csv, tuning.csv, budgets.csv, curve.csv, savings.csv and pareto.csv here")
    _plan_arguments(comparison)
    # --seed is the split seed here, --seeds the runs' training seeds; tuning evaluates on validation, the runs on test
    _retrain_arguments(comparison, exclude=("seed", "eval_split"))
    comparison.set_defaults(handler=cmd_compare)
    export = verbs.add_parser("export", help="write a figure (paper style) or the table behind it")
    _settings_arguments(export)
    export.add_argument("--signal", required=True, help="a signal name, 'all' (every cached signal side by side), "
                        "'plans' (every method's plan at --budget) or 'comparison' (the retrain results table)")
    export.add_argument("--figure", default=None, help="which of its figures (default: the first; see --list)")
    export.add_argument("--list", action="store_true", help="list the figures and tables it has, and stop")
    export.add_argument("--format", choices=["pdf", "svg", "png", "csv", "tex"], default=None,
                        help="default: from the --out suffix")
    export.add_argument("--out", type=Path, default=None, help="file to write")
    export.add_argument("--width", choices=["column", "page"], default="column",
                        help="one column (3.4 in) or the full text width (7 in) (default: %(default)s)")
    export.add_argument("--grayscale", action="store_true", help="grays and dash patterns instead of colours")
    _plan_arguments(export)
    export.set_defaults(handler=cmd_export)
    return parser


def _write_job_result(value: dict) -> None:
    from analysis.contract import job_folder
    job_folder.write_result(value)


def _internal_error(exc: BaseException, cache_dir: Path | None = None) -> str:
    """Keep the traceback on disk, under the command's cache (--cache-dir, else the default); return the one
    sentence the user sees."""
    from analysis.store.cache import default_cache_dir
    log = Path(cache_dir or default_cache_dir()) / "logs" / f"error-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(traceback.format_exc())
    return f"Internal error ({type(exc).__name__}: {shorten(str(exc), 200)}); the traceback is in {log}."


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on the write end)."""
    import select
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLERR)
    return bool(poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_paths(args)
        code = args.handler(args)
        sys.stdout.flush()   # inside the try: a closed pipe shows up here, not at interpreter exit
        return code
    except UserError as exc:
        message = str(exc)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        message, code = "Interrupted; nothing partial was written to the cache.", 130
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            message, code = _internal_error(exc, getattr(args, "cache_dir", None)), EXIT_INTERNAL_ERROR
        else:   # the reader went away (`... | head`): not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    except Exception as exc:  # a bug: keep the traceback on disk, show one sentence
        message, code = _internal_error(exc, getattr(args, "cache_dir", None)), EXIT_INTERNAL_ERROR
    print(f"error: {message}", file=sys.stderr)
    _write_job_result({"status": "failed", "message": message})
    return code


if __name__ == "__main__":
    sys.exit(main())
