import pytest
import torch

from core.ddpm.unet import UNet, UNetConfig


@pytest.mark.parametrize(
    "size,channels,mult,attn",
    [(8, 1, (1, 2), (4,)), (16, 1, (1, 2, 2), (8,)), (16, 3, (1, 2), ()), (32, 3, (1, 1, 2, 2), (8, 4))],
)
def test_shapes(size, channels, mult, attn):
    cfg = UNetConfig(
        sample_size=size,
        in_channels=channels,
        base_channels=8,
        channel_mult=mult,
        attention_resolutions=attn,
        num_res_blocks=1,
        num_classes=3,
        norm_groups=4,
    )
    m = UNet(cfg)
    x = torch.randn(2, channels, size, size)
    out = m(x, torch.tensor([1, 500]), torch.tensor([0, 3]))  # 3 is the null class
    assert out.shape == x.shape
    # not tied to the configured size: any size divisible by 2^levels works
    big = torch.randn(1, channels, size * 2, size * 2)
    assert m(big, torch.tensor([3])).shape == big.shape


def test_class_conditioning_changes_output():
    torch.manual_seed(0)
    m = UNet(
        UNetConfig(
            sample_size=8,
            base_channels=8,
            channel_mult=(1, 2),
            attention_resolutions=(4,),
            num_classes=10,
            norm_groups=4,
            dropout=0.0,
        )
    )
    for p in m.parameters():  # break the zero-initialised output layers
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 8, 8)
    t = torch.tensor([10])
    assert not torch.allclose(m(x, t, torch.tensor([1])), m(x, t, torch.tensor([2])))
    assert torch.allclose(m(x, t, None), m(x, t, torch.tensor([10])))  # None is the null class


@pytest.mark.parametrize(
    "field,value",
    [
        ("in_channels", 2),
        ("channel_mult", ()),
        ("num_res_blocks", 0),
        ("dropout", 1.5),
        ("sample_size", 18),
        ("num_classes", 0),
        ("norm_groups", 7),
        ("base_channels", 0),
    ],
)
def test_bad_config_names_field(field, value):
    kw = {"sample_size": 16, "base_channels": 8, "channel_mult": (1, 2, 2), "norm_groups": 4, field: value}
    with pytest.raises(ValueError, match=field):
        UNetConfig(**kw)


def test_unknown_field_raises():
    with pytest.raises(ValueError, match="widht"):
        UNetConfig.from_dict({"widht": 3})


def test_indivisible_input_raises():
    m = UNet(UNetConfig(sample_size=8, base_channels=8, channel_mult=(1, 2), norm_groups=4))
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(1, 1, 9, 9), torch.tensor([1]))
