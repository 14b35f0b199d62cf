"""The reference ResNetV2 VAE and its discriminator: sizes, shapes, block algebra, sampling."""

from __future__ import annotations

import pytest
import torch

from mixelbo_reference.config import MODEL_CONFIGS
from mixelbo_reference.models import (
    ModelConfig,
    PreActBlock,
    PreActUpBlock,
    build_discriminator,
    build_vae,
    count_parameters,
)


def _conv(k: int, cin: int, cout: int, bias: bool = False) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # trainable gamma and beta


def _paper_counts() -> tuple[int, int, int, int]:
    """The authors' layout counted by hand: (encoder, sampler heads, decoder, discriminator)."""
    w, size, latent, chs = 128, 256, 512, 64  # chs = latent / 8 maps of 4 x 4
    block = 3 * _bn(w) + 2 * _conv(3, w, w) + _conv(1, w, w)  # BN-ReLU-conv x3
    down = block + _bn(w) + _conv(1, w, w)  # + BN-ReLU-conv1x1 stride-2 shortcut
    encoder = 2 * size * size + _conv(3, 3, w, bias=True)  # layer norm over (H, W) + stem
    encoder += 6 * (2 * block + down) + _conv(1, w, chs, bias=True)
    heads = 2 * (4 * 4 * chs * latent + latent)
    decoder = latent * 4 * 4 * chs + 4 * 4 * chs + _conv(3, chs, w, bias=True)

    def up(cout: int) -> int:  # BN-ReLU-conv1x1, BN-ReLU-convT3x3; shortcut BN-ReLU-convT3x3
        return (
            _bn(w)
            + _conv(1, w, cout)
            + _bn(cout)
            + _conv(3, cout, cout)
            + _bn(w)
            + _conv(3, w, cout)
        )

    decoder += 6 * block + 5 * up(w) + up(3) + _conv(1, 3, 3, bias=True)
    disc_layers = [(3, 128), (128, 128), (128, 128), (128, 64), (64, 64)]
    disc = sum(_conv(3, a, b, bias=True) + _bn(b) for a, b in disc_layers)
    disc += _conv(3, 64, 1, bias=True)
    return encoder, heads, decoder, disc


def test_paper_256_parameter_counts_match_the_authors_layout() -> None:
    encoder, heads, decoder, disc = _paper_counts()
    with torch.device("meta"):
        vae = build_vae(MODEL_CONFIGS["paper-256"])
        discriminator = build_discriminator(MODEL_CONFIGS["paper-256"])
    assert count_parameters(vae.encoder) == encoder
    assert count_parameters(vae.mu_head) + count_parameters(vae.logvar_head) == heads
    assert count_parameters(vae.decoder) + count_parameters(vae.decoder_input) == decoder
    assert count_parameters(discriminator) == disc
    # The authors' reported sizes: "about 9.9 M" (encoder + decoder) and "about 0.41 M".
    assert abs((encoder + decoder) / 1e6 - 9.9) < 0.05
    assert abs(disc / 1e6 - 0.41) < 0.005


def test_paper_256_shapes_on_meta_device() -> None:
    config = MODEL_CONFIGS["paper-256"]
    with torch.device("meta"):
        vae = build_vae(config)
        discriminator = build_discriminator(config)
        x = torch.empty(2, 3, 256, 256)
        x_hat, mu, logvar, z = vae(x)
        logits = discriminator(x_hat)
        features = vae.encoder[:-2](x)  # before the 1x1 conv and flatten
    assert features.shape == (2, 128, 4, 4)
    assert x_hat.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (2, 512)
    assert logits.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("name", ["cpu-64", "tiny-32"])
def test_small_configs_map_an_image_batch_to_the_right_shapes(name: str) -> None:
    config = MODEL_CONFIGS[name]
    vae, discriminator = build_vae(config), build_discriminator(config)
    x = torch.rand(3, config.in_chs, config.image_size, config.image_size) * 2 - 1
    x_hat, mu, logvar, z = vae(x)
    assert x_hat.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (3, vae.latent_dim) == (3, config.latent_dim)
    size = config.image_size // 8
    assert discriminator(x_hat).shape == (3, 1, size, size)
    assert torch.isfinite(x_hat).all()
    assert vae.decode(mu).shape == x.shape
    assert [t.shape for t in vae.encode(x)] == [mu.shape, logvar.shape]


def test_identity_block_is_the_identity_when_the_residual_is_zero() -> None:
    block = PreActBlock(6)
    torch.nn.init.zeros_(block.conv3.weight)
    x = torch.randn(2, 6, 8, 8)
    assert isinstance(block.shortcut, torch.nn.Identity)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_stride_two_block_and_upsampling_block_shapes_and_shortcut() -> None:
    down = PreActBlock(4, 6, stride=2)
    assert down(torch.randn(2, 4, 8, 8)).shape == (2, 6, 4, 4)
    up = PreActUpBlock(4, 3)
    assert up(torch.randn(2, 4, 5, 7)).shape == (2, 3, 10, 14)
    # With the residual's last conv zeroed the output is the shortcut alone:
    # BN (eval, fresh statistics: the identity up to eps) -> ReLU -> transposed conv.
    up = PreActUpBlock(4, 3).eval()
    torch.nn.init.zeros_(up.conv2.weight)
    x = torch.randn(1, 4, 3, 3)
    expected = torch.nn.functional.conv_transpose2d(
        x.relu(), up.shortcut[1].weight, stride=2, padding=1, output_padding=1
    )
    torch.testing.assert_close(up(x), expected, rtol=1e-4, atol=1e-4)


def test_reparameterize_draws_from_the_posterior() -> None:
    mu = torch.tensor([[1.5, -2.0]]).expand(20000, 2)
    logvar = torch.tensor([[0.0, 2 * torch.log(torch.tensor(0.3)).item()]]).expand(20000, 2)
    z = build_vae(MODEL_CONFIGS["tiny-32"]).reparameterize(mu, logvar)
    # mean and standard deviation within 5 standard errors
    assert torch.allclose(z.mean(0), torch.tensor([1.5, -2.0]), atol=5 * 1.0 / 20000**0.5)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 0.3]), rtol=0.03)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"latent_dim": 12}, "latent_dim"),
        ({"image_size": 40}, "image_size"),
        ({"width": 0}, "width"),
    ],
)
def test_bad_model_config_raises_value_error_naming_the_field(
    changes: dict[str, int], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        ModelConfig(**changes)


def test_grey_decoder_repeats_one_channel_and_trains_grey_on_mnist() -> None:
    """``grey``: every decoded channel equal (no colour cast), the image shape unchanged, and
    the last up-block and 1x1 conv shrunk to one channel (counted by hand)."""
    from mixelbo_reference.config import TrainConfig

    base = MODEL_CONFIGS["tiny-32"]
    grey = build_vae(ModelConfig(**{**base.__dict__, "grey": True}))
    colour = build_vae(base)
    x_hat = grey.decode(torch.randn(4, base.latent_dim))
    assert x_hat.shape == (4, 3, 32, 32)
    assert torch.equal(x_hat[:, 0], x_hat[:, 1]) and torch.equal(x_hat[:, 0], x_hat[:, 2])
    assert not torch.equal(*colour.decode(torch.randn(2, base.latent_dim))[:, :2].unbind(1))
    w = base.width  # the last up-block's convs and the final 1x1 conv with 1 output, not 3
    saved = _conv(1, w, 3) - _conv(1, w, 1) + _bn(3) - _bn(1)  # residual 1x1 conv, its BN
    saved += _conv(3, 3, 3) - _conv(3, 1, 1)  # residual transposed 3x3 conv
    saved += _conv(3, w, 3) - _conv(3, w, 1)  # shortcut transposed 3x3 conv
    saved += _conv(1, 3, 3, bias=True) - _conv(1, 1, 1, bias=True)
    assert count_parameters(colour) - count_parameters(grey) == saved
    # the trainer: grey for MNIST unless told otherwise
    assert TrainConfig(model="tiny-32", data="mnist").model_config.grey
    assert not TrainConfig(model="tiny-32").model_config.grey
    assert not TrainConfig(model="tiny-32", data="mnist", grey=False).model_config.grey
    assert TrainConfig(model="tiny-32", grey=True).model_config.grey
