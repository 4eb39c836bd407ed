"""A finished command exits without the interpreter's module teardown, but after every exit handler, status kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env

SCRIPT = """
import atexit, sys
from pathlib import Path
out = Path(sys.argv[1])

class Witness:  # freed (and so noted) only by the interpreter's teardown of this module
    def __init__(self, path):
        self.path, self.write = str(path), open  # kept here: module globals are gone by then

    def __del__(self):
        with self.write(self.path, "w") as fh:
            fh.write("ran")

witness = Witness(out / "teardown")
atexit.register(lambda: (out / "exit_handler").write_text("ran"))
print("printed before exit", end="")  # left in stdout's buffer: must still come out
sys.argv = ["lit_features", *sys.argv[2:]]
import runpy
runpy.run_module("lit_features", run_name="__main__")  # as python -m lit_features
"""


@pytest.mark.parametrize(("args", "status"), [(["list"], 0), (["no-such-command"], 2)])
def test_finished_command_skips_teardown_after_exit_handlers(tmp_path: Path, args: list[str], status: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stdout.startswith("printed before exit")
    assert (tmp_path / "exit_handler").read_text() == "ran"  # logging, W&B, temporary folders: still done
    assert not (tmp_path / "teardown").exists()  # torch & co. are not freed module by module (1-2 s)
