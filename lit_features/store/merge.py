"""End of a run: merge the per-rank index and failure logs into ``index.jsonl`` and ``failures.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from lit_features.store import layout


def merge_store_logs(root: Path) -> dict[str, int]:
    """Merge per-rank index and failure logs into ``index.jsonl`` and ``failures.jsonl`` (latest row per key).

    Tolerates ranks that wrote nothing. A failure is dropped from the merged list once its key is done.
    """
    index = layout.latest_rows(root, layout.INDEX_DIR)
    failures = layout.latest_rows(root, layout.FAILURES_DIR, exclude=index)
    layout.atomic_write_text(root / layout.MERGED_INDEX, "".join(json.dumps(index[k]) + "\n" for k in sorted(index)))
    layout.atomic_write_text(
        root / layout.MERGED_FAILURES, "".join(json.dumps(failures[k]) + "\n" for k in sorted(failures))
    )
    return {"written": len(index), "failed": len(failures)}
