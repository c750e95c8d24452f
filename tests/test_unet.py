"""The DDPM U-Net: shapes, time conditioning, attention placement, and clear size errors."""

import pytest
import torch

from udm.nets import UNet
from udm.nets.unet import Attention


@pytest.mark.parametrize("patch_size", [1, 2])
def test_output_shape_follows_input(patch_size):
    net = UNet(image_size=28, in_channels=1, channels=16, channel_mult=(1, 2), patch_size=patch_size, attention_resolutions=())
    x = torch.randn(3, 1, 28, 28)
    assert net(x, torch.tensor([1, 500, 1000])).shape == x.shape


def test_rgb_and_attention_at_the_named_resolutions():
    net = UNet(image_size=32, in_channels=3, channels=16, channel_mult=(1, 2, 2), attention_resolutions=(16,))
    sides_with_attention = [
        32 // 2**i for i, level in enumerate(net.down) if any(isinstance(a, Attention) for a in level.attns)
    ]
    assert sides_with_attention == [16]
    assert net(torch.randn(2, 3, 32, 32), torch.tensor([3, 7])).shape == (2, 3, 32, 32)


def test_time_embedding_changes_the_output():
    net = UNet(image_size=8, channels=16, channel_mult=(1, 2), attention_resolutions=(4,))
    for p in net.parameters():  # leave the zero-initialised identity start
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 8, 8)
    a, b = net(x, torch.tensor([10, 10])), net(x, torch.tensor([900, 900]))
    assert (a - b).abs().max() > 1e-3


def test_dropout_is_active_only_in_training():
    net = UNet(image_size=8, channels=16, channel_mult=(1, 2), attention_resolutions=(), dropout=0.5)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


def test_sizes_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_size=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="groups"):
        UNet(image_size=28, channels=12, groups=8)


def test_attention_takes_the_fused_sdpa_kernel_and_matches_the_formula():
    """Contiguous heads reach SDPA's fused CPU kernel (a transposed view falls back to the math path, ~12% slower
    per U-Net step, experiments/benchmark/README.md), and the result is softmax(q k^T / sqrt(d)) v."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    attn = Attention(64, groups=8)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = attn(x)
    ops = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in op for op in ops), sorted(ops)
    with torch.no_grad():
        q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 32, 64).transpose(-1, -2).unbind(1)
        h = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, dim=-1) @ v
        expected = x + attn.proj(h.transpose(-1, -2).reshape(2, 64, 8, 8))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
