"""The unit list of a store: which slice of which manifest file each work unit is, and where its files live.

A store written in work units keeps, under ``<output_dir>/units/``:

- ``list.json``: the manifests it was cut from (path, size, modification time, root), the unit size, and per
  unit its manifest file and byte range; plus the few facts about the whole manifest a unit cannot know alone
  (keys that collide across units and get a hash suffix, exact duplicates to skip). Written once, atomically.
- ``manifest-<k>.jsonl``: a compact copy of each manifest that is not a local JSON Lines file (a JSON list, a
  CSV, a list file, a folder), written by the one pass that cuts it; JSON Lines files are read in place.
- ``<unit>/lease.<g>``, ``<unit>/done``, ``<unit>/finished-g<g>-rank-<r>``: claiming (see
  :mod:`lit_features.units.lease`).
- per feature set (the output directory, or a named folder inside it) ``units/<unit>/g<g>/index|failures|
  crashes/rank-<r>.jsonl``: the rows written under claim ``g`` of the unit, one file per rank of the job that
  held the claim (so no two processes ever append to one file, even when a unit changes hands).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_features.errors import UserError
from lit_features.store import layout
from lit_features.store.layout import UNITS_DIR

LIST_FILE = "list.json"
LIST_FORMAT = 1
DONE_FILE = "done"


class UnitListMismatchError(UserError, RuntimeError):
    """The store's units were cut from other manifests than the ones this job gives."""


@dataclass(frozen=True)
class Unit:
    """One slice of one manifest file: ``count`` entries in bytes ``[start, end)``, the first being entry
    number ``first_index`` (a line number for JSON Lines, as :class:`ManifestError` counts them)."""

    number: int
    source: int
    start: int
    end: int
    first_index: int
    count: int

    @property
    def uid(self) -> str:
        return unit_id(self.number)


def unit_id(number: int) -> str:
    return f"u{number:07d}"


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What says a local manifest file is unchanged: its absolute path, size and modification time."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class UnitList:
    """The parsed ``list.json`` (see the module docstring)."""

    units_dir: Path
    unit_size: int
    inputs: list[dict[str, Any]]
    root: str | None
    sources: list[dict[str, Any]]
    units: list[Unit]
    collided: frozenset[str] = frozenset()
    dropped: dict[int, list[int]] = field(default_factory=dict)
    entries: int = 0

    def __len__(self) -> int:
        return len(self.units)

    def source_path(self, unit: Unit) -> Path:
        path = Path(self.sources[unit.source]["path"])
        return path if path.is_absolute() else self.units_dir / path

    def as_json(self) -> dict[str, Any]:
        return {
            "format": LIST_FORMAT,
            "unit_size": self.unit_size,
            "inputs": self.inputs,
            "root": self.root,
            "sources": self.sources,
            "entries": self.entries,
            "units": [[u.source, u.start, u.end, u.first_index, u.count] for u in self.units],
            "collided": sorted(self.collided),
            "dropped": {str(k): v for k, v in sorted(self.dropped.items())},
        }

    def write(self) -> bool:
        """Publish the list unless another job did first (create-if-absent by ``link``); ``True`` if ours won."""
        final = self.units_dir / LIST_FILE
        tmp = layout.temp_path(final)
        tmp.write_text(json.dumps(self.as_json()))
        try:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.link(tmp, final)  # atomic and exclusive, also over NFS: exactly one job's list is the list
            layout.fsync_dir(self.units_dir)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def read(cls, units_dir: Path) -> UnitList:
        data = json.loads((units_dir / LIST_FILE).read_text())
        if data.get("format") != LIST_FORMAT:
            raise UnitListMismatchError(
                f"{units_dir / LIST_FILE} has unit list format {data.get('format')!r}; this lit_features reads "
                f"format {LIST_FORMAT}. Use the lit_features version that wrote the store."
            )
        units = [Unit(i, *row) for i, row in enumerate(data["units"])]
        return cls(
            units_dir=units_dir,
            unit_size=data["unit_size"],
            inputs=data["inputs"],
            root=data["root"],
            sources=data["sources"],
            units=units,
            collided=frozenset(data.get("collided", [])),
            dropped={int(k): v for k, v in data.get("dropped", {}).items()},
            entries=data.get("entries", 0),
        )

    def check_inputs(self, inputs: list[dict[str, Any]], root: str | None) -> None:
        """Refuse a job whose manifests (or root) differ from those the units were cut from.

        Raises:
            UnitListMismatchError: naming the first difference and what to do.
        """
        ours = [{k: i.get(k) for k in ("path", "size", "mtime_ns")} for i in self.inputs]
        theirs = [{k: i.get(k) for k in ("path", "size", "mtime_ns")} for i in inputs]
        if ours == theirs and self.root == root:
            return
        if [i["path"] for i in ours] != [i["path"] for i in theirs]:
            why = f"manifests {[i['path'] for i in theirs]}, but its units were cut from {[i['path'] for i in ours]}"
        elif self.root != root:
            why = f"--data.root {root!r}, but its units were cut with --data.root {self.root!r}"
        else:
            changed = next(t["path"] for o, t in zip(ours, theirs, strict=True) if o != t)
            why = f"a changed {changed} (size or modification time differ from when its units were cut)"
        raise UnitListMismatchError(
            f"{self.units_dir.parent}: this job gives {why}. A store's units are fixed when it is first cut, so a "
            "changed manifest would shift entries between units. Write to another --writer.output_dir, or give the "
            "manifest the store was cut from."
        )


def units_dir(output_dir: Path) -> Path:
    return Path(output_dir) / UNITS_DIR


def has_units(output_dir: Path) -> bool:
    return (units_dir(output_dir) / LIST_FILE).exists()


def unit_dir(output_dir: Path, uid: str) -> Path:
    """The folder of one unit's leases and markers (under the job's output directory)."""
    return units_dir(output_dir) / uid


def claim_dir(store_root: Path, uid: str, generation: int) -> Path:
    """Where one feature set keeps the rows written under claim ``generation`` of unit ``uid``."""
    return units_dir(store_root) / uid / f"g{generation}"


def claim_dirs(store_root: Path, uid: str) -> list[Path]:
    """Every claim folder of a unit in one feature set, oldest claim first (later rows win)."""
    folder = units_dir(store_root) / uid
    try:
        names = [e.name for e in os.scandir(folder) if e.is_dir() and e.name[:1] == "g" and e.name[1:].isdigit()]
    except OSError:
        return []
    return [folder / n for n in sorted(names, key=lambda n: int(n[1:]))]
