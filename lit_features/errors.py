"""The base class of every error a user can cause and fix (bad manifest, config, weights, store refusal).

The command line prints such an error as one line and exits with status 2; anything else is a bug in
lit_features and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, configuration or environment; the message says what and how to fix it."""
