"""Read and validate video manifests in every form the source systems use, producing :class:`Sample` records.

Forms: a JSON list of entries (``path``, ``cap``, ``num_frames``, ``fps``, ``resolution``, ``cut``, extra
fields kept), or a JSON object mapping keys to entries; a list file of ``<dataset_root>,<meta_json>`` lines;
JSON Lines; a CSV of video + caption; a
plain directory of videos/images; and IIANet split lists (``tr/cv/tt`` folders holding ``s1.json``/``s2.json``
rows ``[wav, mouth_npz, n]``). Every problem is reported as a :class:`ManifestError` naming the file, the entry
and the field, before any model is loaded. What an entry may hold: :mod:`lit_features.data.sample`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_features.data.keys import assign_keys, selector_suffix
from lit_features.data.list_files import iianet_folders, list_file_pairs, read_split_list
from lit_features.data.manifest_error import ManifestError
from lit_features.data.remote import (
    Location,
    as_location,
    files_below,
    must_exist,
    open_text,
    relative_name,
    resolve,
)
from lit_features.data.sample import (
    CSV_CAPTION_COLUMNS,
    CSV_PATH_COLUMNS,
    IMAGE_EXTENSIONS,
    IMAGE_LIST_FIELDS,
    VIDEO_EXTENSIONS,
    Sample,
    validate_entry,
)
from lit_features.progress import progress

log = logging.getLogger(__name__)


def _load_json(file: Location) -> Any:
    try:
        with open_text(file) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ManifestError(file, "file not found") from None
    except json.JSONDecodeError as err:
        raise ManifestError(file, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        raise ManifestError(file, f"invalid JSON: {err}") from None


def _resolve(root: Location, rel: str) -> str:
    remote = resolve(root, rel)
    if remote is not None:
        return remote
    # Absolute: a source is part of a stored sample's identity, whatever folder a run starts in.
    return os.path.abspath(rel if os.path.isabs(rel) else os.path.join(root, rel))


def _rel_name(root: Location, rel: str) -> str:
    """The name a key is made from: the path relative to the dataset root.

    An absolute path outside the root keeps its last two components (``.../clips/a.mp4`` -> ``clips/a.mp4``), so
    keys do not change when the data moves to another machine; collisions get hash suffixes in ``assign_keys``.
    URLs follow the same rules (:func:`lit_features.data.remote.relative_name`).
    """
    remote = relative_name(root, rel)
    if remote is not None:
        return remote
    if not os.path.isabs(rel):
        return rel
    inside = os.path.relpath(rel, root)
    if not inside.startswith(".."):
        return inside
    return "/".join(Path(rel).parts[-2:])


@dataclass
class RawEntry:
    entry: dict[str, Any]
    root: Location
    file: Location
    index: int


def _entries_from_list(data: Any, file: Location, root: Location) -> list[RawEntry]:
    if isinstance(data, dict):
        for wrapper in ("data", "entries", "items", "videos"):
            if isinstance(data.get(wrapper), list):
                data = data[wrapper]
                break
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        # {key: entry} (e.g. OpenS2V-Eval's JSON): each entry keeps its mapping key as its sample key.
        data = [{**entry, "key": str(key)} for key, entry in data.items()]
    if not isinstance(data, list):
        raise ManifestError(file, f"expected a JSON list of entries, got {type(data).__name__}")
    entries = progress(data, desc=f"checking {file.name}", unit="entries")
    return [RawEntry(validate_entry(e, file, i), root, file, i) for i, e in enumerate(entries)]


def read_json_list(file: Location, root: Location | None = None) -> list[RawEntry]:
    return _entries_from_list(_load_json(file), file, root or file.parent)


def read_jsonl(file: Location, root: Location | None = None) -> list[RawEntry]:
    out = []
    with open_text(file) as fh:
        for lineno, line in enumerate(progress(fh, desc=f"reading {file.name}", unit="lines"), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(file, f"invalid JSON: {err.msg}", entry=lineno) from None
            except ValueError as err:
                raise ManifestError(file, f"invalid JSON: {err}", entry=lineno) from None
            out.append(RawEntry(validate_entry(entry, file, lineno), root or file.parent, file, lineno))
    return out


def read_list_file(file: Location) -> list[RawEntry]:
    """``<dataset_root>,<meta_json>`` lines; relative roots/JSONs resolve against the list file's folder."""
    out = []
    with open_text(file) as fh:
        for lineno, root_text, meta_text in list_file_pairs(fh, file):
            root = as_location(_resolve(file.parent, root_text))
            meta = as_location(_resolve(file.parent, meta_text))
            if not meta.exists():
                raise ManifestError(file, f"meta JSON {str(meta)!r} does not exist", entry=lineno)
            out.extend(read_json_list(meta, root) if meta.suffix != ".jsonl" else read_jsonl(meta, root))
    return out


def read_csv(file: Location, root: Location | None = None) -> list[RawEntry]:
    return list(iter_csv(file, root))


def iter_csv(file: Location, root: Location | None = None) -> Iterator[RawEntry]:
    """The entries of a CSV manifest, one at a time (a CSV of any length is never held whole)."""
    with open_text(file, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        path_col = next((c for c in CSV_PATH_COLUMNS if c in columns), None)
        if path_col is None:
            raise ManifestError(
                file, f"no video column; expected one of {CSV_PATH_COLUMNS}, got {columns}", field="path"
            )
        cap_col = next((c for c in CSV_CAPTION_COLUMNS if c in columns), None)
        for i, row in enumerate(progress(reader, desc=f"reading {file.name}", unit="rows"), start=2):
            entry: dict[str, Any] = {k: v for k, v in row.items() if k not in (path_col, cap_col)}
            entry["path"] = row[path_col]
            if cap_col is not None:
                entry["cap"] = row[cap_col]
            for k in ("num_frames",):
                if entry.get(k):
                    try:
                        entry[k] = int(entry[k])
                    except ValueError:
                        raise ManifestError(file, f"not an integer: {entry[k]!r}", i, k) from None
            if entry.get("fps"):
                try:
                    entry["fps"] = float(entry["fps"])
                except ValueError:
                    raise ManifestError(file, f"not a number: {entry['fps']!r}", i, "fps") from None
            yield RawEntry(validate_entry(entry, file, i), root or file.parent, file, i)


def read_directory(folder: Location) -> list[RawEntry]:
    exts = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    if not isinstance(folder, Path):
        names = [n for n in files_below(folder) if os.path.splitext(n)[1].lower() in exts]
        return [RawEntry({"path": n}, folder, folder, i) for i, n in enumerate(names)]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return [RawEntry({"path": str(p.relative_to(folder))}, folder, folder, i) for i, p in enumerate(files)]


def read_iianet_split(split_root: Path, split: str, root: str | os.PathLike | None = None) -> list[RawEntry]:
    """Mouth ``.npz`` entries of one IIANet split (``train``/``val``/``test``/``all``), deduplicated.

    Relative paths in the lists resolve as IIANet opens them: against the working directory, or against
    ``root`` when given (``--data.root``) — never against the list's own folder.
    """
    base = Path(root) if root is not None else Path.cwd()
    out, seen = [], set()
    for folder in iianet_folders(split_root, split):
        for name in ("s1.json", "s2.json"):
            file = folder / name
            rows = read_split_list(file, "[wav, mouth_npz, n]")
            for i, row in enumerate(rows):
                if not (isinstance(row, list) and len(row) >= 2 and isinstance(row[1], str) and row[1]):
                    raise ManifestError(file, f"expected [wav, mouth_npz, n], got {row!r}", i, "mouth_npz")
                if row[1] in seen:
                    continue
                seen.add(row[1])
                entry = {"path": row[1], "wav": row[0]}
                if len(row) > 2:
                    entry["n_samples"] = row[2]
                out.append(RawEntry(entry, base, file, i))
    return out


def read_manifest_entries(manifest: str | os.PathLike, root: str | os.PathLike | None = None) -> list[RawEntry]:
    """Dispatch on the manifest's form (by extension, or a directory)."""
    path = as_location(manifest)
    if must_exist(path) and not path.exists():
        raise ManifestError(path, "manifest not found")
    base = as_location(root) if root is not None else None
    if path.is_dir():
        return read_directory(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_json_list(path, base)
    if suffix == ".jsonl":
        return read_jsonl(path, base)
    if suffix == ".csv":
        return read_csv(path, base)
    if suffix in (".txt", ".list"):
        return read_list_file(path)
    raise ManifestError(path, "unknown manifest form; use .json, .jsonl, .csv, a <root>,<json> .txt list, or a folder")


def _resolved(r: RawEntry, media_field: str) -> dict[str, Any]:
    """The entry with its media and image paths made absolute (what the sample actually reads)."""
    entry = dict(r.entry)
    if media_field in entry:
        entry[media_field] = _resolve(r.root, entry[media_field])
    for name in IMAGE_LIST_FIELDS:
        if name in entry:
            entry[name] = [_resolve(r.root, p) for p in entry[name]]
    return entry


def entry_identity(r: RawEntry, media_field: str = "path") -> tuple[str, str]:
    """``(relative name, absolute identity)`` of an entry, what its key is made from (see ``assign_keys``)."""
    rel = r.entry.get(media_field)
    suffix = selector_suffix(r.entry.get("cut"))
    explicit = r.entry.get("key", r.entry.get("id"))
    if explicit is not None:  # an entry that names itself keeps that name
        return str(explicit) + suffix, f"id:{explicit}{suffix}"
    if rel is None:  # entries without media (text, reference images): identify by position
        return f"{r.file.stem}_{r.index:06d}", f"{r.file}#{r.index}"
    return _rel_name(r.root, rel) + suffix, _resolve(r.root, rel) + suffix


def make_sample(r: RawEntry, key: str, media_field: str = "path") -> Sample:
    """The :class:`Sample` of an entry under its key (source absolute, the entry's own path kept as written)."""
    entry = _resolved(r, media_field)
    source = entry.get(media_field)
    if source is not None:
        entry[media_field] = r.entry[media_field]
    return Sample(key=key, source=source, entry=entry, manifest=str(r.file), index=r.index)


def check_duplicate(first: RawEntry, again: RawEntry, key: str, media_field: str) -> None:
    """Entries giving one key must be the same sample; a differing caption or path would be silently dropped."""
    a, b = _resolved(first, media_field), _resolved(again, media_field)
    if a == b:
        return
    fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    raise ManifestError(
        again.file,
        f"gives key {key!r} like {first.file}, entry {first.index}, but with a different "
        f"{', '.join(repr(f) for f in fields)}; one sample cannot have both. Remove one of the two entries, or give "
        "them distinct 'key' (or 'id') fields to keep both.",
        again.index,
    )


def build_samples(raw: Iterable[RawEntry], media_field: str = "path") -> list[Sample]:
    """Resolve sources and attach keys; merge exact duplicates, refuse conflicting ones.

    Raises:
        ManifestError: two entries give the same key (same media and selector, or the same ``key``/``id``)
            but differ in anything else (caption, prompt, images, path, extra fields).
    """
    raw = list(raw)
    idents = [entry_identity(r, media_field) for r in progress(raw, desc="assigning keys", unit="samples")]
    keys = assign_keys(idents)
    samples: list[Sample] = []
    first: dict[str, RawEntry] = {}
    duplicates = 0
    for r, key in zip(raw, keys, strict=True):
        if key in first:
            check_duplicate(first[key], r, key, media_field)
            duplicates += 1  # the same sample listed twice (e.g. a mouth clip in s1 and s2): one sample
            continue
        first[key] = r
        samples.append(make_sample(r, key, media_field))
    if duplicates:
        log.info(
            "manifest: %d entries listed a sample already listed (identical); each sample is done once", duplicates
        )
    return samples


def read_manifests(
    manifests: str | os.PathLike | Sequence[str | os.PathLike], root: str | os.PathLike | None = None
) -> list[Sample]:
    """Read one or several manifests into samples with unique keys across all of them."""
    if isinstance(manifests, (str, os.PathLike)):
        manifests = [manifests]
    raw: list[RawEntry] = []
    for m in manifests:
        entries = read_manifest_entries(m, root)
        if not entries:  # each one: a wrong file among several must not pass unnoticed
            what = "no video or image files below this folder" if Path(m).is_dir() else "no entries"
            raise ManifestError(m, f"{what} (the manifest is empty); a manifest lists at least one sample")
        raw.extend(entries)
    return build_samples(raw)
