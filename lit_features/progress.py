"""Progress bars for long steps outside ``predict`` (the predict bar is in :mod:`lit_features.predict_report`).

:func:`progress` is the one helper for any long loop (reading a big manifest, filtering millions of rows,
checking or exporting a store). It is ``tqdm`` with the house settings: counts, rate and ETA on stderr; shown
only when the step takes longer than ``delay`` seconds (small inputs print nothing); on rank 0 only; updated
at most every 10 s when stderr is not a terminal (log files stay short); ``TQDM_DISABLE=1`` hides every bar::

    for row in progress(rows, desc="filter", unit="rows"):
        ...
    with progress(total=len(keys), desc="export", unit="samples") as bar:
        for chunk in chunks:
            bar.update(len(chunk))
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from lit_features.logs import is_rank_zero_process


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    unit_scale: bool = False,
    delay: float = 1.0,
) -> tqdm:
    """A progress bar over ``iterable`` (or, without one, updated by hand with ``bar.update(n)``).

    Args:
        iterable: what the step loops over; ``len()`` gives the total when it has one.
        desc: what the step does, e.g. ``"reading data.json"``.
        total: the count to reach when ``iterable`` has no length (``None``: counts and rate, no ETA).
        unit: what is counted (``"entries"``, ``"rows"``, ``"samples"``, ``"B"``).
        unit_scale: print large counts as 1.2M (use with ``unit="B"`` for bytes).
        delay: seconds before the bar appears; a faster step shows nothing.
    """
    options: dict[str, Any] = {}
    if not is_rank_zero_process():
        options["disable"] = True  # rank 0 speaks for the run
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        unit_scale=unit_scale,
        delay=delay,
        mininterval=0.1 if interactive else 10.0,
        file=sys.stderr,
        dynamic_ncols=interactive,
        **options,
    )
