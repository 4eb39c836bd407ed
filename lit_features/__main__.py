"""``python -m lit_features`` / ``lit-features``: Lightning subcommands plus plain ``verify``/``filter``/``inspect``.

``fit``, ``validate``, ``test`` and ``predict`` go through LightningCLI (YAML configs, ``--print_config``).
``verify``, ``export-npz``, ``export-motion``, ``filter``, ``inspect`` and ``list`` are plain typed functions that
never load a model.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from lit_features.errors import UserError

PLAIN_COMMANDS = {
    "verify": "lit_features.commands.verify:verify",
    "export-npz": "lit_features.commands.export_npz:export_npz",
    "export-motion": "lit_features.training.motion_export:export_motion_checkpoint",
    "filter": "lit_features.commands.filter:filter_clips",
    "inspect": "lit_features.commands.inspect:inspect_store",
    "list": "lit_features.commands.listing:list_extractors",
}


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


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`UserError` becomes one line on stderr and exit status 2.

    ``--debug`` (anywhere on the command line) or ``LIT_FEATURES_DEBUG=1`` keeps the traceback instead.
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["LIT_FEATURES_DEBUG"] = "1"  # inherited by the processes DDP launches for the other ranks
        if from_command_line:
            sys.argv = [sys.argv[0], *argv]  # LightningCLI and DDP's relaunch read sys.argv
    try:
        return _dispatch(argv, from_command_line)
    except UserError as err:
        if os.environ.get("LIT_FEATURES_DEBUG", "") not in ("", "0"):
            raise
        print(f"lit_features: error: {err}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str], from_command_line: bool) -> int:
    """Run a plain command or the LightningCLI; returns the process exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lit_features").setLevel(logging.INFO)
    if argv and argv[0] in PLAIN_COMMANDS:
        from jsonargparse import CLI

        try:
            function = _load(PLAIN_COMMANDS[argv[0]])
        except ModuleNotFoundError as err:
            print(f"lit_features {argv[0]}: not available ({err})", file=sys.stderr)
            return 2
        result = CLI(function, args=expand_bare_flags(function, argv[1:]), as_positional=True)
        return result if isinstance(result, int) else 0
    from lit_features.cli import run_cli

    run_cli(None if from_command_line else argv)  # LightningCLI reads sys.argv itself when run from a shell
    return 0


if __name__ == "__main__":
    sys.exit(main())
