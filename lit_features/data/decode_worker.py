"""Entry point of the decoder child process: answer media requests read from stdin until it closes."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "LIT_FEATURES_DECODER_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """End this process when the DataLoader worker that started it dies, even by SIGKILL.

    Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``), which also ends a decode
    stuck in a C call. Elsewhere a watchdog thread polls the parent. Either way, a parent that died before
    this ran is noticed through the pid it left in the environment.
    """
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if parent and os.getppid() != parent:
        os._exit(0)  # the worker is already gone
    if not armed and parent:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    """Serve ``(function, args, kwargs)`` requests; reply ``("ok", result)`` or ``("error", (type, message))``."""
    die_with_parent()
    # Ctrl-C reaches the whole process group: the job stops, and its workers with it. Were the decoder to die of
    # it first, its worker could report a healthy sample as a crashed decode. It ends with its worker instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from lit_features.data.decode_sandbox import SHARED_MEMORY_ENV, read_message, write_message
    from lit_features.data.media import MEDIA_FUNCTIONS

    try:  # quiet FFmpeg: broken files are expected and reported through the reply
        import av.logging

        av.logging.set_level(av.logging.PANIC)
    except Exception:
        pass
    shared_prefix = os.environ.get(SHARED_MEMORY_ENV) or None  # large arrays go back through shared memory
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
        write_message(out, result, shared_prefix)


if __name__ == "__main__":
    main()
