"""``python -m lit_features`` / ``lit-features``: Lightning subcommands plus plain ``verify``/``filter``/``inspect``.

``fit``, ``validate``, ``test`` and ``predict`` go through LightningCLI (YAML configs, ``--print_config``).
``verify``, ``export``, ``export-npz``, ``export-motion``, ``filter``, ``inspect``, ``compact``, ``migrate-units``
and ``list`` are plain typed
functions that never load a model.

Errors a user caused (:class:`~lit_features.errors.UserError`, wherever raised, also when a library wrapped
it) are printed as one line, ``lit_features: error: <message>``, with exit status 2; ``--debug`` anywhere on
the command line (or ``LIT_FEATURES_DEBUG=1``) keeps the traceback and shows every log line. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

from lit_features import child_ranks
from lit_features.errors import CommandLineError, describe_parse_error, find_user_error, one_line
from lit_features.logs import quiet_library_loggers, rank_label, setup_logging

PLAIN_COMMANDS = {
    "verify": "lit_features.commands.verify:verify",
    "export": "lit_features.export.run:export_command",
    "export-npz": "lit_features.commands.export_npz:export_npz",
    "export-motion": "lit_features.training.motion_export:export_motion_checkpoint",
    "filter": "lit_features.commands.filter:filter_clips",
    "inspect": "lit_features.commands.inspect:inspect_store",
    "compact": "lit_features.units.commands:compact_store",
    "migrate-units": "lit_features.units.commands:migrate_units",
    "list": "lit_features.commands.listing:list_extractors",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = (
    "usage: python -m lit_features <command> [options]   (python -m lit_features <command> --help)\n"
    "  predict         extract features into a store (--config configs/<job>.yaml)\n"
    "  fit             train a model on stored features (--config configs/motion_ae.yaml)\n"
    "  validate, test  evaluate a trained model\n"
    "  inspect         summarise a feature store\n"
    "  compact         write one index.jsonl for a store written in work units (optional)\n"
    "  migrate-units   move a store of the layout without work units into units\n"
    "  verify          compare two feature sets\n"
    "  export          write a store as LitData / WebDataset / Parquet shards (local or s3://...)\n"
    "  export-npz      write a store as upstream .npz files\n"
    "  export-motion   convert a motion autoencoder checkpoint to upstream's layout\n"
    "  filter          select training clips (FlashI2V rules)\n"
    "  list            the registered extractors\n"
    "  --debug         (anywhere) keep tracebacks and show every log line"
)


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def expand_bare_flags(function, args: list[str]) -> list[str]:
    """Let boolean options be given bare (``--json``) as well as with a value (``--json true``)."""
    import inspect

    flags = {f"--{n}" for n, p in inspect.signature(function).parameters.items() if p.annotation in (bool, "bool")}
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        nxt = args[i + 1] if i + 1 < len(args) else None
        if arg in flags and (nxt is None or nxt.startswith("-")):
            out.append("true")
    return out


def debug_enabled() -> bool:
    return os.environ.get("LIT_FEATURES_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`~lit_features.errors.UserError` becomes one line on stderr and exit status 2."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["LIT_FEATURES_DEBUG"] = "1"  # inherited by the processes DDP launches for the other ranks
        if from_command_line:
            sys.argv = [sys.argv[0], *argv]  # LightningCLI and DDP's relaunch read sys.argv
    setup_logging(debug_enabled(), import_lightning=False)  # imported only by the commands that need it
    try:
        return _dispatch(argv, from_command_line)
    except Exception as err:
        user_error = find_user_error(err)
        handed = child_ranks.launched_rank_error() if user_error is None else None
        if (user_error is None and handed is None) or debug_enabled():
            child_ranks.stop_launched_ranks()
            raise
        if handed is not None:  # this rank only failed because that one was gone
            line = handed
        else:
            rank = rank_label()
            line = f"lit_features: error: {'[' + rank + '] ' if rank else ''}{one_line(user_error)}"
        child_ranks.report(line)
        child_ranks.stop_launched_ranks()
        return 2


def _dispatch(argv: list[str], from_command_line: bool) -> int:
    """Run a plain command or the LightningCLI; returns the process exit code."""
    commands = ", ".join([*LIGHTNING_COMMANDS, *PLAIN_COMMANDS])
    if not argv:
        raise CommandLineError(f"give a command: {commands} (python -m lit_features --help)")
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in PLAIN_COMMANDS:
        return _run_plain(argv[0], argv[1:])
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        raise CommandLineError(f"unknown command {argv[0]!r}; choose one of {commands}")
    from lit_features.cli import run_cli

    quiet_library_loggers()
    run_cli(None if from_command_line else argv)  # LightningCLI reads sys.argv itself when run from a shell
    return 0


def _run_plain(name: str, args: list[str]) -> int:
    from jsonargparse import CLI, ArgumentError

    try:
        function = _load(PLAIN_COMMANDS[name])
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("lit_features"):
            raise
        raise CommandLineError(f"{name} is not available here ({err}); install lit_features' optional extras") from err
    quiet_library_loggers()
    try:
        result = CLI(function, args=expand_bare_flags(function, args), as_positional=True, exit_on_error=False)
    except ArgumentError as err:
        raise CommandLineError(describe_parse_error(str(err), f"python -m lit_features {name} --help")) from err
    return result if isinstance(result, int) else 0


def run() -> None:
    """The command-line entry point (``python -m lit_features``, ``lit-features``): :func:`main`, then exit.

    A finished command leaves without the interpreter's teardown of every module: freeing torch, Lightning and
    transformers one by one takes 1-2 s, a third of a small predict run's fixed cost (measured with
    ``tools/benchmarks/core_pipeline.py``), and does nothing a finished command needs. The exit handlers still
    run first (logging flushed, W&B finished, temporary folders removed, multiprocessing's children ended), and
    while any non-daemon thread is alive Python exits as usual, joining it.
    """
    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what Python runs at exit before the teardown
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
