"""The errors a user can cause and fix (bad manifest, config, weights, store refusal), and how they are found.

The command line prints such an error as one line, ``lit_features: error: <message>``, and exits with status
2; anything else is a bug in lit_features and keeps its traceback. Conventions for code that raises them:

- Raise a subclass of :class:`UserError` where the user's input is known to be the cause (the manifest entry,
  the option value, the path they gave), never around code that could fail for other reasons.
- The message says what is wrong, where (file / entry / field / option / key) and what to do. It may span
  several lines (e.g. a list of differences); the command line folds them into one (:func:`one_line`).
- Wrapping is fine: a library that re-raises with ``raise ... from user_error`` (jsonargparse does while it
  builds the configured objects) still reaches the user as the original message (:func:`find_user_error`).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, configuration or environment; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """An option value that cannot work; the message names the option and what to give instead."""


class CommandLineError(UserError):
    """The command line itself was rejected (unknown option or command, a value of the wrong type)."""


def find_user_error(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error``: itself, or the first one in its explicit ``raise ... from`` chain.

    Only explicit causes count: an error raised while *handling* a user error (``__context__``) is a bug.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def one_line(message: object) -> str:
    """Fold a message onto one line: detail lines are joined with ``"; "`` (after a line ending in ``:``, a space)."""
    out = ""
    for line in str(message).splitlines():
        line = line.strip()
        if not line:
            continue
        if not out:
            out = line
        elif out.endswith(":"):
            out += " " + line
        else:
            out += "; " + line
    return out


# Lines of a jsonargparse error that describe its own machinery rather than the problem.
_PARSER_BOILERPLATE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
)


def describe_parse_error(message: str, help_command: str) -> str:
    """One line from a jsonargparse error: the option, the class it belongs to, what is wrong, where to look.

    ``Parser key "data": ... Problem with given class_path '...ManifestDataModule': Parser key "batch_size":
    Expected a <class 'int'>. Got value: abc`` becomes ``data.batch_size (ManifestDataModule): Expected a
    <class 'int'>. Got value: abc (see python -m lit_features predict --help)``. Unknown shapes of message
    are kept whole, folded onto one line.
    """
    import re

    keys: list[str] = []
    owner = None
    details: list[str] = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        match = re.match(r'Parser key "([^"]+)":\s*(.*)$', line)
        if match:
            if match[1] not in keys:
                keys.append(match[1])
            line = match[2]
        match = re.match(r"Problem with given class_path '([^']+)':\s*(.*)$", line)
        if match:
            owner = match[1].rsplit(".", 1)[-1]
            line = match[2]
        if line and not line.startswith(_PARSER_BOILERPLATE):
            details.append(line)
    if not details:
        return f"{one_line(message)} (see {help_command})"
    where = ".".join(keys)
    if owner:
        where += f" ({owner})"
    return f"{where + ': ' if where else ''}{'; '.join(details)} (see {help_command})"
