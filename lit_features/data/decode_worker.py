"""Entry point of the decoder child process: answer media requests read from stdin until it closes."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Serve ``(function, args, kwargs)`` requests; reply ``("ok", result)`` or ``("error", (type, message))``."""
    from lit_features.data.decode_sandbox import read_message, write_message
    from lit_features.data.media import MEDIA_FUNCTIONS

    try:  # quiet FFmpeg: broken files are expected and reported through the reply
        import av.logging

        av.logging.set_level(av.logging.PANIC)
    except Exception:
        pass
    stdin_fd = sys.stdin.fileno()
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    while True:
        try:
            function, args, kwargs = read_message(stdin_fd)
        except EOFError:
            return
        try:
            result = ("ok", MEDIA_FUNCTIONS[function](*args, **kwargs))
        except Exception as err:  # every failure goes back to the worker as a record
            result = ("error", (type(err).__name__, str(err)))
        write_message(out, result)


if __name__ == "__main__":
    main()
