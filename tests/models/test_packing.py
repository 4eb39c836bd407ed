"""Packed block-diagonal attention equals dense attention under a block-diagonal mask."""

import pytest
import torch
import torch.nn.functional as F

from lit_features.models.packing import cu_seqlens_from_lengths, flash_attn_available, segment_attention


def _dense_block_diagonal(q, k, v, lengths, scale=None):
    owner = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = owner[:, None] == owner[None, :]  # True where attention is allowed
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale
    )
    return out.transpose(0, 1)


def test_cu_seqlens_from_lengths():
    cu = cu_seqlens_from_lengths([3, 0, 2])
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 3, 3, 5]
    assert cu_seqlens_from_lengths(torch.tensor([4])).tolist() == [0, 4]
    with pytest.raises(ValueError, match="non-negative"):
        cu_seqlens_from_lengths([2, -1])


@pytest.mark.parametrize("scale", [None, 0.3])
def test_segment_attention_matches_masked_dense(scale):
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 0, 7, 3]
    total, heads, dim = sum(lengths), 3, 8
    q, k, v = (torch.randn(total, heads, dim, generator=gen) for _ in range(3))
    out = segment_attention(q, k, v, cu_seqlens_from_lengths(lengths), scale=scale)
    ref = _dense_block_diagonal(q, k, v, [n for n in lengths if n], scale=scale)
    assert out.shape == (total, heads, dim)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_segment_attention_rejects_bad_boundaries():
    q = torch.zeros(6, 2, 4)
    with pytest.raises(ValueError, match="end at the packed length 6"):
        segment_attention(q, q, q, cu_seqlens_from_lengths([2, 3]))
    with pytest.raises(ValueError, match=r"\[total, heads, head_dim\]"):
        segment_attention(q[0], q[0], q[0], cu_seqlens_from_lengths([2]))


def test_forcing_flash_without_it_is_a_clear_error():
    q = torch.zeros(4, 1, 8)
    with pytest.raises(RuntimeError, match="use_flash=True needs flash-attn"):
        segment_attention(q, q, q, cu_seqlens_from_lengths([4]), use_flash=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_paths_match_masked_dense():
    gen = torch.Generator().manual_seed(1)
    lengths = [33, 1, 64, 17]
    total = sum(lengths)
    q, k, v = (torch.randn(total, 4, 64, generator=gen).cuda().to(torch.bfloat16) for _ in range(3))
    cu = cu_seqlens_from_lengths(lengths, device="cuda")
    ref = _dense_block_diagonal(q.float().cpu(), k.float().cpu(), v.float().cpu(), lengths)
    sdpa = segment_attention(q, k, v, cu, use_flash=False)
    torch.testing.assert_close(sdpa.float().cpu(), ref, atol=2e-2, rtol=2e-2)
    if flash_attn_available():
        flash = segment_attention(q, k, v, cu, use_flash=True)
        torch.testing.assert_close(flash.float().cpu(), ref, atol=2e-2, rtol=2e-2)
