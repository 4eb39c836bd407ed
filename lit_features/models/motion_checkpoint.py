"""Loading a motion autoencoder: upstream ``{epoch, state_dict, config, mean_loss}`` files and ``fit`` checkpoints.

Both load strictly (every key and shape checked, the message names the file) and return an eval-mode model.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import torch

from lit_features.models.motion_autoencoder import MotionAutoencoderConfig, MotionFeatureAutoencoder
from lit_features.models.weights import load_state_dict_strict, read_torch_checkpoint

# Upstream training stores argparse Namespace values, whose paths are pathlib objects; allowing exactly
# these classes keeps torch.load in its safe weights-only mode.
CHECKPOINT_SAFE_GLOBALS = [
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
]


def load_motion_autoencoder(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    allow_pickle: bool = False,
) -> MotionFeatureAutoencoder:
    """Loads a checkpoint in the upstream layout ``{epoch, state_dict, config, mean_loss}``.

    ``config`` is a dict holding at least the constructor arguments (extra training arguments are
    ignored). When it has no ``use_token`` entry the value is read off the input projection's width. When
    it has no ``sequence_grouping`` entry the checkpoint comes from the upstream trainer and is loaded with
    ``"upstream_flat"``, the token grouping it was trained with (see :data:`SEQUENCE_GROUPINGS`).

    Args:
        path: Checkpoint file.
        map_location: Device the tensors are loaded onto.
        allow_pickle: Load with full pickle (can run arbitrary code) for checkpoints holding objects other
            than tensors, containers and paths. Only for files you trust.

    Returns:
        The model in eval mode, weights loaded strictly.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: When the file is not in the expected layout or its weights do not match its config.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise FileNotFoundError(f"motion autoencoder checkpoint not found: {path_str}")
    with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
        checkpoint = read_torch_checkpoint(path_str, map_location, allow_pickle)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint or "config" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path_str}: expected a dict with 'state_dict' and 'config' (the upstream "
            f"{{epoch, state_dict, config, mean_loss}} layout), found {found}"
        )
    state_dict, raw_config = checkpoint["state_dict"], checkpoint["config"]
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path_str}: 'state_dict' must map parameter names to tensors")
    if not isinstance(raw_config, Mapping):
        raise ValueError(
            f"{path_str}: 'config' must be a dict of constructor arguments, got {type(raw_config).__name__}"
        )
    config_values = dict(raw_config)
    config_values.setdefault("sequence_grouping", "upstream_flat")
    if "use_token" not in config_values and "input_dim" in config_values:
        proj = state_dict.get("encoder.input_proj.weight")
        if proj is not None:
            config_values["use_token"] = proj.shape[1] == 2 * int(config_values["input_dim"])
    try:
        config = MotionAutoencoderConfig.from_dict(config_values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path_str}: invalid 'config': {error}") from error

    model = MotionFeatureAutoencoder.from_config(config)
    load_state_dict_strict(model, state_dict, path_str, "the motion autoencoder built from its config")
    model.checkpoint_path = path_str
    return model.eval()


def load_motion_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", allow_pickle: bool = False
) -> MotionFeatureAutoencoder:
    """Load a motion autoencoder from a ``fit`` checkpoint (``.ckpt``) or an upstream ``{epoch, state_dict, config}``.

    Returns:
        The model in eval mode with its weights loaded strictly.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"motion autoencoder checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=not allow_pickle, mmap=True)
    except Exception:
        # Not readable as a plain weights-only file (an upstream checkpoint may hold pathlib objects): the
        # upstream loader allows those, and its error says what is wrong with the file otherwise.
        checkpoint = None
    if not isinstance(checkpoint, Mapping) or "hyper_parameters" not in checkpoint:
        return load_motion_autoencoder(path, map_location=map_location, allow_pickle=allow_pickle)
    hparams = dict(checkpoint["hyper_parameters"])
    config = MotionAutoencoderConfig.from_dict(hparams)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model = MotionFeatureAutoencoder.from_config(config)
    load_state_dict_strict(model, state, path, f"a motion autoencoder with {config.to_dict()}")
    model.checkpoint_path = path
    return model.eval()
