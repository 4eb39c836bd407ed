"""Run several command lines through ``lit_features.__main__.main`` in one process (start-up paid once).

    python tests/cli/run_cases.py cases.json results.json

``cases.json`` is a list of argument lists; ``results.json`` receives, per case, ``rc``, ``stdout`` and
``stderr``. Each case's output is captured at the file-descriptor level (everything the process prints), and
an exception escaping ``main`` is printed as the interpreter prints it and counts as exit status 1, as
``python -m lit_features`` would. The environment is restored between cases (``--debug`` sets a variable).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def run_case(args: list[str]) -> dict:
    from lit_features.__main__ import main

    environ = dict(os.environ)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            try:
                rc = main(list(args))
            except SystemExit as exit_:
                rc = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            os.environ.clear()
            os.environ.update(environ)
        out.seek(0)
        err.seek(0)
        return {"rc": rc, "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def main(argv: list[str]) -> int:
    cases = json.loads(open(argv[0]).read())
    sys.argv = ["lit_features"]  # LightningCLI warns when given args and a command line both
    results = [run_case(args) for args in cases]
    with open(argv[1], "w") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
