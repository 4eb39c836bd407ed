"""The error every manifest reader raises: what is wrong, in which file, entry and field."""

from __future__ import annotations

import os

from lit_features.errors import UserError


class ManifestError(UserError, ValueError):
    """A manifest problem a user can fix; the message names the file, the entry and the field."""

    def __init__(self, file: str | os.PathLike, message: str, entry: int | None = None, field: str | None = None):
        where = f"{file}"
        if entry is not None:
            where += f", entry {entry}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.file, self.entry, self.field = str(file), entry, field
