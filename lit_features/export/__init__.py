"""Export a feature store into training-ready shards (LitData chunks, WebDataset tars, Parquet), local or remote.

The per-sample store stays the crash-safe source of truth; an export reads it only through
:class:`~lit_features.store.reader.FeatureStore` and is incremental: each run adds the samples written since
the last one as a new *part* and records the store fingerprint beside the shards. One module per format holds
its shard writer and its streaming reader.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lit_features.errors import UserError

FORMATS = {
    "litdata": ("lit_features.export.litdata_format", "litdata"),
    "webdataset": ("lit_features.export.webdataset_format", "webdataset"),
    "parquet": ("lit_features.export.parquet_format", "pyarrow"),
}


class ExportDependencyError(UserError, ImportError):
    """The package a format needs is not installed."""


def format_module(name: str) -> ModuleType:
    """The module implementing export format ``name``; a missing optional package is a one-line error."""
    if name not in FORMATS:
        raise UserError(f"unknown export format {name!r}; choose one of {sorted(FORMATS)}")
    module, package = FORMATS[name]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if getattr(err, "name", None) and err.name.split(".")[0] != package.split(".")[0]:
            raise
        raise ExportDependencyError(
            f"the {name} format needs the {package} package: pip install 'lit_features[{name}]' ({err})"
        ) from None
