"""OneVision-Encoder-style video ViT with 3D rotary positions, in a padded-batch form and a packed form.

The architecture (OneVision-Encoder lineage, Apache-2.0): a per-frame Conv2d patch embedding without bias,
no CLS token and no absolute position embedding, a pre-layernorm, pre-norm transformer layers (norm,
attention, GELU-tanh MLP), a post-layernorm and an attention-pooling head; the norms are LayerNorm or RMSNorm
as the config's ``layer_norm_type`` says. Positions enter only through a
3D rotary embedding over (t, h, w): head_dim/2 frequencies split 4:6:6 between the axes, each axis with
``inv_freq = 1 / theta ** (arange(n) / n)``, duplicated as ``concat(f, f)`` and applied with an
interleaved ``rotate_half`` ((x_even, x_odd) -> (-x_odd, x_even) pairwise).

Both forms run over the same weights:

* :meth:`OneVisionViTModel.forward` takes a zero-padded batch ``[B, 3, T, H, W]`` (videos sit in a
  64-slot temporal grid, see :func:`frame_slots`) plus ``visible_indices`` and embeds only those patches;
  rotary positions come from the full T x h x w grid.
* :meth:`OneVisionViTModel.forward_packed` takes one flat sequence of flattened patches with a
  ``grid_thw`` per item and explicit ``patch_positions``; token-wise work runs once over the whole pack and
  attention is block-diagonal per item (:func:`lit_features.models.packing.segment_attention`).

Positions and patches: :mod:`lit_features.models.onevision_positions`; layers:
:mod:`lit_features.models.onevision_layers`. ``hidden_states`` holds the input to layer 0 followed by the output
of every layer, so ``hidden_states[-2]`` is the penultimate layer's output, before the post-layernorm.
Parameter names follow the upstream non-packing Hugging Face implementation (``embeddings.patch_embedding``,
``layernorm_pre``, ``encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``layernorm_post``, ``head.probe`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lit_features.models.onevision_layers import (
    OneVisionViTEmbeddings,
    OneVisionViTEncoder,
    OneVisionViTPoolingHead,
    make_norm,
)
from lit_features.models.onevision_positions import (
    DEFAULT_TEMPORAL_SLOTS,
    grid_positions,
    rope_axis_sizes,
    rope_frequencies,
)
from lit_features.models.packing import cu_seqlens_from_lengths

__all__ = ["LAYER_NORM_TYPES", "OneVisionViTConfig", "OneVisionViTModel"]

#: Values of ``OneVisionViTConfig.layer_norm_type`` (the upstream config field of the same name).
LAYER_NORM_TYPES = ("layer_norm", "rms_norm")


class OneVisionViTConfig(PretrainedConfig):
    """Configuration of :class:`OneVisionViTModel`; defaults are the ViT-L/14 sizes (hidden 1024, 24 layers).

    Args:
        hidden_size: Token width.
        intermediate_size: MLP hidden width.
        num_hidden_layers: Number of transformer layers.
        num_attention_heads: Attention heads; ``hidden_size / num_attention_heads`` must be a multiple of
            32 so that head_dim/2 splits 4:6:6 between t, h and w.
        num_channels: Input channels.
        patch_size: Square patch size in pixels.
        hidden_act: MLP activation (``gelu_pytorch_tanh`` is GELU with the tanh approximation).
        layer_norm_eps: Epsilon of every norm.
        layer_norm_type: ``layer_norm`` or ``rms_norm``: the norm of the pre-layernorm, both norms of every
            layer and the post-layernorm (an ``rms_norm`` checkpoint has no norm biases). The pooling head's
            own norm is an RMSNorm either way.
        attention_dropout: Dropout on attention probabilities (training only).
        initializer_range: Std of the normal init of fresh weights.
        rope_theta: Rotary base.
        temporal_slots: Size of the temporal grid that sampled video frames are spread over.
        use_head: Whether the post-layernorm and attention-pooling head exist.
        **kwargs: Passed to ``PretrainedConfig`` (markers such as ``tiny_random_stand_in`` are kept).
    """

    model_type = "onevision_vit"

    def __init__(
        self,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        num_channels: int = 3,
        patch_size: int = 14,
        hidden_act: str = "gelu_pytorch_tanh",
        layer_norm_eps: float = 1e-6,
        layer_norm_type: str = "layer_norm",
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        rope_theta: float = 10000.0,
        temporal_slots: int = DEFAULT_TEMPORAL_SLOTS,
        use_head: bool = True,
        **kwargs,
    ) -> None:
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.hidden_act = hidden_act
        if layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {layer_norm_type!r}")
        self.layer_norm_eps = layer_norm_eps
        self.layer_norm_type = layer_norm_type
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.rope_theta = rope_theta
        self.temporal_slots = temporal_slots
        self.use_head = use_head
        super().__init__(**kwargs)


class OneVisionViTPreTrainedModel(PreTrainedModel):
    """Weight init and (de)serialisation glue shared by the OneVision ViT models."""

    config_class = OneVisionViTConfig
    base_model_prefix = "onevision_vit"
    main_input_name = "pixel_values"
    _no_split_modules = ["OneVisionViTEncoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The base class covers Linear/Conv (normal), norms (ones/zeros) and MultiheadAttention.
        super()._init_weights(module)
        if isinstance(module, OneVisionViTPoolingHead):
            init.normal_(module.probe, std=self.config.initializer_range)


class OneVisionViTModel(OneVisionViTPreTrainedModel):
    """OneVision-Encoder-style video ViT; see the module docstring for the two input forms."""

    def __init__(self, config: OneVisionViTConfig) -> None:
        super().__init__(config)
        self.head_dim = config.hidden_size // config.num_attention_heads
        if self.head_dim * config.num_attention_heads != config.hidden_size:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by num_attention_heads {config.num_attention_heads}"
            )
        rope_axis_sizes(self.head_dim)  # fail at construction, not at the first forward
        self.embeddings = OneVisionViTEmbeddings(config)
        self.layernorm_pre = make_norm(config)
        self.encoder = OneVisionViTEncoder(config)
        if config.use_head:
            self.layernorm_post = make_norm(config)
            self.head = OneVisionViTPoolingHead(config)
        else:
            self.layernorm_post = None
            self.head = None
        self.post_init()

    def _pool(self, sequence: torch.Tensor) -> torch.Tensor | None:
        if self.head is None:
            return None
        return self.head(self.layernorm_post(sequence))

    def _finish(self, last, pooled, states, return_dict: bool | None):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (last, pooled, states) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=states)

    def forward(
        self,
        pixel_values: torch.Tensor,
        visible_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Batch form: encodes the visible patches of a zero-padded batch.

        Args:
            pixel_values: ``[B, 3, T, H, W]`` (videos in a ``temporal_slots``-frame grid, zeros in empty
                slots) or images ``[B, 3, H, W]`` (t = 0). H and W must be multiples of the patch size.
            visible_indices: ``[B, K]`` flat indices into the T x h x w patch grid of the patches to
                encode (see :func:`visible_indices_for_slots`); all patches when None.
            output_hidden_states: Return ``hidden_states`` (input to layer 0, then every layer's output);
                defaults to ``config.output_hidden_states``.
            return_dict: Return a ``BaseModelOutputWithPooling`` (default) or a tuple.

        Returns:
            ``last_hidden_state`` ``[B, K, D]`` (last layer, before the post-layernorm), ``pooler_output``
            ``[B, D]`` and optionally ``hidden_states``.
        """
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(2)
        if pixel_values.dim() != 5:
            raise ValueError(f"expected pixel_values [B, 3, T, H, W] or [B, 3, H, W], got {tuple(pixel_values.shape)}")
        batch, channels, frames, height, width = pixel_values.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"{height}x{width} is not a multiple of the {p}px patch; crop it first")
        h, w = height // p, width // p
        device = pixel_values.device
        if visible_indices is None:
            visible_indices = torch.arange(frames * h * w, device=device).expand(batch, -1)
        visible_indices = visible_indices.to(device=device, dtype=torch.long)
        if visible_indices.dim() != 2 or visible_indices.shape[0] != batch:
            raise ValueError(f"visible_indices must be [B={batch}, K], got {tuple(visible_indices.shape)}")
        if visible_indices.numel() and (int(visible_indices.min()) < 0 or int(visible_indices.max()) >= frames * h * w):
            raise ValueError(f"visible_indices must lie in [0, {frames}*{h}*{w}) for this input")

        t_idx = torch.div(visible_indices, h * w, rounding_mode="floor")
        h_idx = torch.div(visible_indices % (h * w), w, rounding_mode="floor")
        w_idx = visible_indices % w
        # Index a (C, p, p)-blocked view so only visible patches are copied: result [B, K, C, p, p].
        blocks = pixel_values.reshape(batch, channels, frames, h, p, w, p)
        b_idx = torch.arange(batch, device=device)[:, None]
        patches = blocks[b_idx, :, t_idx, h_idx, :, w_idx, :].reshape(batch, visible_indices.shape[1], -1)

        positions = torch.stack([t_idx, h_idx, w_idx], dim=-1)
        freqs = rope_frequencies(positions, self.head_dim, self.config.rope_theta)
        hidden = self.layernorm_pre(self.embeddings(patches))
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        last, states = self.encoder(hidden, freqs, None, output_hidden_states)
        return self._finish(last, self._pool(last), states, return_dict)

    def forward_packed(
        self,
        patches: torch.Tensor,
        grid_thw: torch.Tensor | Sequence[Sequence[int]],
        patch_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Packed form: encodes several items concatenated into one flat patch sequence.

        Args:
            patches: ``[total, C*p*p]``, each row one patch flattened (C, p, p) (see :func:`patchify`), items
                one after the other, each in (t, h, w) order.
            grid_thw: ``[n, 3]`` frames, patch rows and patch columns of each item.
            patch_positions: ``[total, 3]`` rotary (t, h, w) of each patch (see :func:`grid_positions`;
                videos use :func:`frame_slots` for t). Defaults to t = 0, 1, ... per item.
            output_hidden_states: As in :meth:`forward`.
            return_dict: As in :meth:`forward`.

        Returns:
            ``last_hidden_state`` ``[total, D]``, ``pooler_output`` ``[n, D]`` (one per item) and
            optionally ``hidden_states`` (each ``[total, D]``).
        """
        grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(-1, 3).cpu()
        if bool((grid <= 0).any()):
            raise ValueError(f"every grid_thw entry must be positive, got {grid.tolist()}")
        lengths = grid.prod(dim=1)
        total = int(lengths.sum())
        patch_dim = self.config.num_channels * self.config.patch_size**2
        if patches.dim() != 2 or patches.shape != (total, patch_dim):
            raise ValueError(
                f"patches must be [{total}, {patch_dim}] for grid_thw {grid.tolist()}, got {tuple(patches.shape)}"
            )
        device = patches.device
        if patch_positions is None:
            patch_positions = torch.cat(
                [grid_positions(range(int(t)), int(h), int(w), device=device) for t, h, w in grid.tolist()]
            )
        if patch_positions.shape != (total, 3):
            raise ValueError(f"patch_positions must be [{total}, 3], got {tuple(patch_positions.shape)}")

        cu_seqlens = cu_seqlens_from_lengths(lengths, device=device)
        freqs = rope_frequencies(patch_positions.to(device), self.head_dim, self.config.rope_theta)
        hidden = self.layernorm_pre(self.embeddings(patches))
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        last, states = self.encoder(hidden, freqs, cu_seqlens, output_hidden_states)
        pooled = None
        if self.head is not None:
            # The head is one query per item; looping over items is cheap next to the encoder.
            bounds = cu_seqlens.tolist()
            pooled = torch.cat([self._pool(last[a:b].unsqueeze(0)) for a, b in pairwise(bounds)])
        return self._finish(last, pooled, states, return_dict)
