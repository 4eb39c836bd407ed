"""Logging of a command-line run: one handler (each message once), library noise filtered, rank 0 speaks.

:func:`setup_logging` is called once by ``python -m lit_features`` (and may be called from a notebook or a
script for the same output). What it does, and why:

- One handler on the root logger, writing to the current ``sys.stderr`` (Jupyter and test runners replace it).
  Lightning adds its own console handler on import *and* propagates to the root, which printed every Lightning
  line twice; :func:`quiet_library_loggers` removes those handlers (call it after importing Lightning).
- Lines say who speaks: ``INFO lit_features: ...``, ``WARNING lightning: ...`` (``--debug``: the full logger name).
- Library lines that say nothing to a user are dropped: Lightning's marketing tips, its device-availability
  lines and process-group banner (the run's first line names the devices), the seed line; transformers'
  complaint about its own SigLIP defaults; deprecation warnings from dependencies (they are addressed to
  lit_features' developers). ``--debug`` shows them all; ``-W``/``PYTHONWARNINGS`` given by the user are
  honoured.
- Processes of ranks other than 0 only report errors: rank 0 speaks for a multi-device run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings

#: Start of Lightning INFO lines that are hidden unless ``--debug`` (marketing, or said by the run's first line).
LIGHTNING_NOISE = (
    "💡 Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",
    "Initializing distributed:",
)
#: Warnings that are always noise in a lit_features run (message regex): a resumed run with nothing left to
#: do has an empty dataloader on purpose; in Jupyter without ipywidgets, tqdm's bars are text (which is fine).
NOISE_WARNINGS = (r"Total length of `\w+` across ranks is zero", r"IProgress not found")
#: Library log lines that are always noise here: transformers' own SigLIP text-config defaults carry special
#: token ids outside their vocabulary (warned on every SigLIP load); no extractor generates text.
TRANSFORMERS_NOISE = (
    "Model config: bos_token_id must be `None` or an integer within the vocabulary",
    "Model config: eos_token_id must be `None` or an integer within the vocabulary",
)
#: Loggers that add their own console handler when imported.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
#: Environment variables that hold a process's rank (Lightning's launcher, torchrun, SLURM, LSF).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_rank_zero_process() -> bool:
    """Whether this process is global rank 0 (or not part of a distributed run), judged from the environment.

    Known before any Trainer exists, so logging can be set up first; every rank variable must say 0.
    """
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value != "0":
            return False
    return True


def rank_label() -> str:
    """``"rank 3"`` (or ``"local rank 1 on node 2"``) for a process of a distributed run, ``""`` for rank 0."""
    if is_rank_zero_process():
        return ""
    env = os.environ
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(name):
            return f"rank {env[name]}"
    label = f"local rank {env.get('LOCAL_RANK', '0')}"
    return label + (f" on node {env['NODE_RANK']}" if env.get("NODE_RANK", "0") != "0" else "")


class _StderrHandler(logging.StreamHandler):
    """A stream handler bound to whatever ``sys.stderr`` is when a record is written."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current sys.stderr always wins
        pass


class _Formatter(logging.Formatter):
    """``LEVEL package: message``; the full logger name with ``--debug``."""

    def __init__(self, debug: bool):
        super().__init__("%(levelname)s %(speaker)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        record.speaker = record.name if self.debug else record.name.split(".")[0]
        return super().format(record)


class _DropTransformersNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TRANSFORMERS_NOISE)


class _DropLibraryNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith(("lightning", "pytorch_lightning")):
            return True
        message = str(record.msg).lstrip()
        return not (message.startswith(LIGHTNING_NOISE) or "distributed_backend=" in message)


_HANDLER_NAME = "lit_features"


def setup_logging(debug: bool = False, import_lightning: bool = True) -> None:
    """Configure logging and warnings for a run (idempotent; see the module docstring).

    Call it first, before other imports (a notebook's first cell). ``import_lightning`` imports Lightning here
    so its console handler can be removed now; the command line passes ``False`` (it only imports Lightning
    for the commands that need it, then calls :func:`quiet_library_loggers`).
    """
    rank_zero = is_rank_zero_process()
    if not (sys.warnoptions or debug):  # else the user chose which warnings to see
        # Before any import below: libraries warn while they are imported.
        if not rank_zero:
            warnings.simplefilter("ignore")
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        for message in NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
    if not rank_zero:
        # Their progress bars and library chatter would repeat rank 0's (child processes inherit this).
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if import_lightning and importlib.util.find_spec("lightning") is not None:
        import lightning  # noqa: F401
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Formatter(debug))
    if not debug:
        handler.addFilter(_DropLibraryNoise())
    handler.setLevel(logging.NOTSET if rank_zero else logging.ERROR)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("lit_features").setLevel(logging.DEBUG if debug else logging.INFO)
    quiet_library_loggers()
    config_logger = logging.getLogger("transformers.configuration_utils")
    if not debug and not any(isinstance(f, _DropTransformersNoise) for f in config_logger.filters):
        config_logger.addFilter(_DropTransformersNoise())


def quiet_library_loggers() -> None:
    """Remove the console handlers Lightning adds on import, so its lines reach the one root handler once."""
    for name in LIBRARY_LOGGERS:
        if name.split(".")[0] not in sys.modules:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers; keep files and others
                logger.removeHandler(handler)
        logger.propagate = True
