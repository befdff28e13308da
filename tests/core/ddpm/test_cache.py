"""The engine's step caches: a cache that reuses nothing equals no cache exactly, a cache reuses what it says (the
deep modules really do not run), the same seed and settings draw the same pixels, alone or in a batch, and a pinned
slice of a cached draw of the bundled model."""

from __future__ import annotations

import pytest
import torch

from core.ddpm.cache import DeepCache, FirstBlockCache, make_step_cache
from core.ddpm.dit import DiT, DiTConfig
from core.ddpm.pipeline import DDPMEngineModel, generate_batch
from core.ddpm.unet import UNet, UNetConfig
from tests.conftest import REPO


@pytest.fixture(scope="module")
def digits() -> DDPMEngineModel:
    return DDPMEngineModel.from_pretrained(REPO / "models" / "digits")


@pytest.fixture(scope="module")
def tiny_dit() -> DDPMEngineModel:
    torch.manual_seed(0)
    net = DiT(DiTConfig(sample_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=3))
    for p in net.parameters():  # adaLN-Zero starts every block as the identity: give the blocks some effect
        torch.nn.init.normal_(p, std=0.05)
    return DDPMEngineModel(net, {"kind": "ddpm"}, labels=["a", "b", "c"], default_num_inference_steps=12)


def calls_of(module: torch.nn.Module) -> list[int]:
    count = [0]
    module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def test_deep_cache_at_interval_1_is_the_uncached_draw_exactly(digits):
    plain = digits.generate(labels=["3"], num_images=2, num_inference_steps=10, seed=4)
    cache = digits.step_cache("deep", 1)
    cached = digits.generate(labels=["3"], num_images=2, num_inference_steps=10, seed=4, step_cache=cache)
    assert torch.equal(plain, cached)
    assert (cache.calls, cache.reused) == (10, 0)


def test_deep_cache_skips_the_deep_blocks_between_full_steps():
    torch.manual_seed(0)
    net = UNet(UNetConfig(sample_size=16, base_channels=16, channel_mult=(1, 2), num_classes=None, dropout=0.0))
    for p in net.parameters():  # the zero-initialised output layers would hide every difference
        torch.nn.init.normal_(p, std=0.05)
    mid, outer = calls_of(net.mid[1]), calls_of(net.up[-1][0])
    cache = DeepCache(net.eval(), interval=3)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        outs = [cache(x, torch.full((2,), 999 - 100.0 * i), None) for i in range(7)]
    assert (cache.calls, cache.reused) == (7, 4)  # full at steps 0, 3 and 6
    assert mid[0] == 3 and outer[0] == 7  # the deep part ran on full steps only; the outermost block every step
    with torch.no_grad():
        assert torch.equal(outs[0], net(x, torch.full((2,), 999.0)))  # a full step is the network itself
        assert not torch.equal(outs[1], net(x, torch.full((2,), 899.0)))  # a reused one is an approximation


def test_a_deep_cached_draw_is_reproducible_and_close_to_the_uncached_one(digits):
    def draw():
        return digits.generate(
            labels=["5"], num_images=2, num_inference_steps=20, seed=9, step_cache=digits.step_cache("deep", 3)
        )

    a, b = draw(), draw()
    assert torch.equal(a, b)
    plain = digits.generate(labels=["5"], num_images=2, num_inference_steps=20, seed=9)
    assert 0 < (a - plain).abs().mean() < 0.05  # an approximation of the same digits, not another drawing


def test_a_batch_shares_the_deep_cache_and_draws_each_request_as_alone(digits):
    def cache():
        return digits.step_cache("deep", 3)

    batch = generate_batch(digits, [(["1"], 1, 5), (["9"], 2, 6)], 10, "ddim", 2.0, 16, step_cache=cache())
    alone = [
        digits.generate(labels=["1"], num_images=1, num_inference_steps=10, sampler="ddim", guidance_scale=2.0,
                        seed=5, step_cache=cache()),
        digits.generate(labels=["9"], num_images=2, num_inference_steps=10, sampler="ddim", guidance_scale=2.0,
                        seed=6, step_cache=cache()),
    ]  # fmt: skip
    for x, y in zip(batch, alone, strict=True):
        assert (x - y).abs().max() < 1e-4


def test_first_block_cache_at_threshold_0_is_the_uncached_draw_exactly(tiny_dit):
    plain = tiny_dit.generate(labels=["b"], num_images=2, seed=1)
    cache = tiny_dit.step_cache("first_block", 0.0)
    assert torch.equal(plain, tiny_dit.generate(labels=["b"], num_images=2, seed=1, step_cache=cache))
    assert (cache.calls, cache.reused) == (12, 0)


def test_first_block_cache_skips_the_other_blocks_when_the_first_barely_moves(tiny_dit):
    net = tiny_dit.unet
    first, last = calls_of(net.blocks[0]), calls_of(net.blocks[-1])
    cache = tiny_dit.step_cache("first_block", 0.5)
    a = tiny_dit.generate(labels=["c"], num_images=2, seed=2, step_cache=cache)
    assert 0 < cache.reused < cache.calls == 12
    assert first[0] == 12 and last[0] == 12 - cache.reused  # reused steps never ran the other blocks
    again = tiny_dit.generate(labels=["c"], num_images=2, seed=2, step_cache=tiny_dit.step_cache("first_block", 0.5))
    assert torch.equal(a, again)
    assert "reused" in cache.describe() and "threshold=0.5" in cache.describe()


def test_a_method_the_network_lacks_is_refused(digits, tiny_dit):
    with pytest.raises(ValueError, match="first_block"):
        make_step_cache(digits.unet, "first_block", 0.1)
    with pytest.raises(ValueError, match="deep"):
        make_step_cache(tiny_dit.unet, "deep", 2)
    assert isinstance(make_step_cache(tiny_dit.unet, "first_block", 0.1), FirstBlockCache)


def test_the_bundled_mnist_with_deep_cache_at_interval_3_draws_a_pinned_slice():
    mnist = DDPMEngineModel.from_pretrained(REPO / "models" / "mnist")
    cache = mnist.step_cache("deep", 3)
    x = mnist.generate(labels=["7"], num_images=1, seed=0, step_cache=cache)
    assert (cache.calls, cache.reused) == (20, 13)
    got = ((x[0, 0, 12:15, 12:15].clamp(-1, 1) + 1) * 127.5).round()
    expected = torch.tensor(EXPECTED_MNIST_SLICE, dtype=got.dtype)
    assert (got - expected).abs().max() <= 2, got.tolist()


EXPECTED_MNIST_SLICE = [[5.0, 3.0, 6.0], [3.0, 3.0, 7.0], [13.0, 27.0, 185.0]]
