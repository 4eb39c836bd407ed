"""Run the benchmarks and print a table (or one JSON object with ``--json``).

    python tools/benchmark.py [--json] [--only core_pipeline ...] [--quick]

Every module in ``tools/benchmarks/`` exposes ``run(quick: bool) -> {"rows": [...], "metrics": {...}}``
(optionally ``"tables": {title: [...]}`` for further tables). Rows are printed as a table; metrics become
top-level keys of the JSON output. Comparisons are made side by side in one run (ratios), since shared machines
are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def available() -> list[str]:
    import tools.benchmarks as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", nargs="*", default=None, help=f"subset: {', '.join(available())}")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke run)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    names = args.only or available()
    result: dict[str, Any] = {"benchmarks": {}}
    for name in names:
        out = importlib.import_module(f"tools.benchmarks.{name}").run(quick=args.quick)
        result["benchmarks"][name] = out
        result.update(out.get("metrics", {}))
        if not args.json:
            print(f"\n== {name}\n{format_table(out.get('rows', []))}", flush=True)
            for title, rows in out.get("tables", {}).items():
                print(f"\n-- {name}: {title}\n{format_table(rows)}", flush=True)
            for key, value in out.get("metrics", {}).items():
                print(f"{key}: {_fmt(value)}")
    if args.json:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
