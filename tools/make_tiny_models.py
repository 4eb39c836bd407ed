"""Write tiny random stand-ins of every model the shipped configs use, under the real directory names.

    python tools/make_tiny_models.py --out pretrained_model [--only hf_vision qwen ...]

Each module in ``tools/tiny_models/`` exposes ``make(out_root) -> list[Path]``; this script runs them all.
Stand-ins are marked (``"tiny_random_stand_in": true``) so the extractors warn loudly and record it in the
store, and a maker never overwrites a directory or file that holds real (unmarked) weights.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # run as a script from anywhere: import lit_features and tools.tiny_models


def available_makers() -> list[str]:
    import tools.tiny_models as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="pretrained_model", help="folder that receives the stand-ins")
    parser.add_argument("--only", nargs="*", default=None, help=f"subset of makers: {', '.join(available_makers())}")
    parser.add_argument(
        "--keep-real", action="store_true", help="skip (instead of failing on) targets that hold real weights"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or available_makers()
    unknown = sorted(set(names) - set(available_makers()))
    if unknown:
        parser.error(f"unknown makers {unknown}; available: {available_makers()}")
    for name in names:
        started = time.perf_counter()
        module = importlib.import_module(f"tools.tiny_models.{name}")
        try:
            written = module.make(out)
        except FileExistsError as err:  # real weights are there: never touched
            if not args.keep_real:
                print(f"error: {err}", file=sys.stderr)
                return 2
            print(f"{name:20s} kept existing weights ({err})")
            continue
        for path in written:
            print(f"{name:20s} {path}  ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
