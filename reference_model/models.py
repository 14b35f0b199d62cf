"""The paper's ResNetV2 VAE (encoder, Gaussian sampler, decoder) and its PatchGAN critic.

Pre-activation residual blocks (He et al. 2016, "Identity Mappings in Deep Residual Networks")
in the layout of the authors' public code (see ``shared/paper/authors-public-code.md``):

- encoder: layer norm of the input over (H, W), a 3x3 stem, then ``num_stages`` stages of
  ``encoder_blocks`` identity blocks and one stride-2 block, a 1x1 conv to
  ``latent_dim // 8`` channels, flatten, and two dense heads (mu, log-variance);
- decoder: dense latent -> ``(latent_dim // 8, s, s)``, a 3x3 conv, then ``num_stages`` stages
  of ``decoder_blocks`` identity blocks and one transposed-convolution upsampling block (the
  last one to the image channels), a final 1x1 conv and no output activation.

Built from timm's layers: :class:`timm.layers.BatchNormAct2d` (BN + ReLU, the pre-activation)
and :func:`timm.layers.create_conv2d`. timm's own pre-activation blocks do not fit this layout:
``PreActBasic`` is conv3x3-conv3x3 with the stride on the first conv and
``PreActBottleneck`` is conv1x1-conv3x3-conv1x1, while the authors' block is
conv3x3-conv3x3-conv1x1 with the stride on the last (1x1) conv; using either changes the
parameter count (9.9 M -> 8.6 M for PreActBottleneck). :class:`PreActBlock` is therefore that
block written with timm layers, and :class:`PreActUpBlock` is the transposed-convolution
upsampling block that timm lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from timm.layers import BatchNormAct2d, create_conv2d
from torch import Tensor, nn

from mixelbo import MultiScaleDiscriminator, PatchDiscriminator

__all__ = [
    "ModelConfig",
    "PreActBlock",
    "PreActUpBlock",
    "ResNetVAE",
    "build_discriminator",
    "build_vae",
    "count_parameters",
]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the VAE and its discriminator (the named configs are in ``config.py``).

    Attributes:
        image_size: height and width of the (square) images; a multiple of ``2**num_stages``.
        in_chs: image channels.
        latent_dim: size of z; a multiple of 8 (the encoder ends in ``latent_dim // 8`` maps).
        width: channels of every residual stage (the authors use 128).
        num_stages: down- (and up-) sampling stages; the bottleneck is
            ``image_size / 2**num_stages`` pixels wide (4 for the paper's 256 and 6 stages).
        encoder_blocks: identity blocks before the stride-2 block in each encoder stage (2).
        decoder_blocks: identity blocks before the upsampling block in each decoder stage (1).
        disc_channels: hidden channels of the PatchGAN convolutions.
        disc_strides: strides of the PatchGAN convolutions (product 8: a map of H/8 x W/8).
        disc_dropout: dropout after each hidden PatchGAN block.
        grey: the images are grey levels stored in every one of the ``in_chs`` channels (MNIST):
            the decoder predicts one channel and repeats it, so decoded images have no colour
            cast (independent channels drift apart and tint the samples).
    """

    image_size: int = 256
    in_chs: int = 3
    latent_dim: int = 512
    width: int = 128
    num_stages: int = 6
    encoder_blocks: int = 2
    decoder_blocks: int = 1
    disc_channels: tuple[int, ...] = (128, 128, 128, 64, 64)
    disc_strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    disc_dropout: float = 0.25
    grey: bool = False

    def __post_init__(self) -> None:
        for name in ("image_size", "in_chs", "latent_dim", "width", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_dim % 8:
            raise ValueError(f"latent_dim must be a multiple of 8, got {self.latent_dim}")
        if self.image_size % 2**self.num_stages:
            raise ValueError(
                f"image_size must be a multiple of 2**num_stages = {2**self.num_stages}, "
                f"got image_size={self.image_size}"
            )

    @property
    def bottleneck_size(self) -> int:
        """Spatial size of the encoder's last feature map."""
        return self.image_size // 2**self.num_stages

    @property
    def latent_chs(self) -> int:
        """Channels of the encoder's last feature map (the authors' latent_dim / 8)."""
        return self.latent_dim // 8


class PreActBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, BN-ReLU-conv1x1.

    The stride is on the last (1x1) convolution, as in the authors' code. With
    ``stride == 1`` and ``in_chs == out_chs`` the shortcut is the identity (an "Id-ResBlock");
    otherwise it is BN-ReLU-conv1x1 with the same stride (a "Conv-ResBlock").

    Args:
        in_chs: input channels.
        out_chs: output channels (default ``in_chs``).
        stride: stride of the last convolution and of the projection shortcut.
        norm_layer: normalization + activation layer (timm style), applied before each conv.

    Shape:
        ``(B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)``.

    Example:
        >>> PreActBlock(8, 16, stride=2)(torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int | None = None,
        stride: int = 1,
        norm_layer: type[nn.Module] = BatchNormAct2d,
    ) -> None:
        super().__init__()
        out_chs = out_chs or in_chs
        self.norm1 = norm_layer(in_chs)
        self.conv1 = create_conv2d(in_chs, out_chs, 3)
        self.norm2 = norm_layer(out_chs)
        self.conv2 = create_conv2d(out_chs, out_chs, 3)
        self.norm3 = norm_layer(out_chs)
        self.conv3 = create_conv2d(out_chs, out_chs, 1, stride=stride)
        self.shortcut: nn.Module = (
            nn.Sequential(norm_layer(in_chs), create_conv2d(in_chs, out_chs, 1, stride=stride))
            if stride != 1 or in_chs != out_chs
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv1(self.norm1(x))
        residual = self.conv2(self.norm2(residual))
        residual = self.conv3(self.norm3(residual))
        return residual + self.shortcut(x)


class PreActUpBlock(nn.Module):
    """Pre-activation upsampling residual block ("Conv-ResBlock Trans"), doubling H and W.

    Residual: BN-ReLU-conv1x1, BN-ReLU-ConvTranspose3x3 (stride 2). Shortcut:
    BN-ReLU-ConvTranspose3x3 (stride 2). The transposed convolutions use padding 1 and
    output padding 1, so the output is exactly twice the input size.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        norm_layer: normalization + activation layer (timm style), applied before each conv.

    Shape:
        ``(B, in_chs, H, W) -> (B, out_chs, 2H, 2W)``.

    Example:
        >>> PreActUpBlock(8, 3)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(
        self, in_chs: int, out_chs: int, norm_layer: type[nn.Module] = BatchNormAct2d
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(in_chs)
        self.conv1 = create_conv2d(in_chs, out_chs, 1)
        self.norm2 = norm_layer(out_chs)
        self.conv2 = _upsample_conv(out_chs, out_chs)
        self.shortcut = nn.Sequential(norm_layer(in_chs), _upsample_conv(in_chs, out_chs))

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv1(self.norm1(x))
        residual = self.conv2(self.norm2(residual))
        return residual + self.shortcut(x)


def _upsample_conv(in_chs: int, out_chs: int) -> nn.ConvTranspose2d:
    """3x3 transposed convolution, stride 2, exact 2x upsampling (Keras ``padding="same"``)."""
    return nn.ConvTranspose2d(in_chs, out_chs, 3, stride=2, padding=1, output_padding=1, bias=False)


class ResNetVAE(nn.Module):
    """The paper's residual VAE: encoder, Gaussian sampler (mu / log-variance heads), decoder.

    Args:
        config: the architecture (see :class:`ModelConfig`).

    Shape:
        - ``x``: ``(B, in_chs, image_size, image_size)``, scaled to [-1, 1].
        - ``mu``, ``logvar``, ``z``: ``(B, latent_dim)``.
        - ``x_hat``: like ``x`` (no output activation, as in the authors' code).

    Example:
        >>> vae = ResNetVAE(ModelConfig(image_size=16, latent_dim=16, width=8, num_stages=2))
        >>> x_hat, mu, logvar, z = vae(torch.rand(2, 3, 16, 16) * 2 - 1)
        >>> x_hat.shape, mu.shape, vae.latent_dim
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 16]), 16)
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        width, size = config.width, config.image_size
        bottleneck = config.latent_chs * config.bottleneck_size**2

        encoder: list[nn.Module] = [
            nn.LayerNorm((size, size)),  # Keras LayerNormalization(axis=(1, 2)): per (H, W)
            create_conv2d(config.in_chs, width, 3, bias=True),
        ]
        for _ in range(config.num_stages):
            encoder += [PreActBlock(width) for _ in range(config.encoder_blocks)]
            encoder.append(PreActBlock(width, width, stride=2))
        encoder.append(create_conv2d(width, config.latent_chs, 1, bias=True))
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.mu_head = nn.Linear(bottleneck, config.latent_dim)
        self.logvar_head = nn.Linear(bottleneck, config.latent_dim)

        self.decoder_input = nn.Linear(config.latent_dim, bottleneck)
        decoder: list[nn.Module] = [
            nn.Unflatten(1, (config.latent_chs, config.bottleneck_size, config.bottleneck_size)),
            create_conv2d(config.latent_chs, width, 3, bias=True),
        ]
        image_chs = 1 if config.grey else config.in_chs
        for stage in range(config.num_stages):
            out_chs = image_chs if stage == config.num_stages - 1 else width
            decoder += [PreActBlock(width) for _ in range(config.decoder_blocks)]
            decoder.append(PreActUpBlock(width, out_chs))
        decoder.append(create_conv2d(image_chs, image_chs, 1, bias=True))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)`` of q(z | x), each ``(B, latent_dim)``."""
        features = self.encoder(x)
        return self.mu_head(features), self.logvar_head(features)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (eq. 6), from the global torch RNG."""
        eps = torch.randn_like(mu)
        return mu + (0.5 * logvar).exp() * eps

    @property
    def last_layer(self) -> Tensor:
        """The weight of the decoder's last convolution (for the adaptive adversarial weight)."""
        last: nn.Conv2d = self.decoder[-1]
        return last.weight

    def decode(self, z: Tensor) -> Tensor:
        """Decoded image ``x_hat`` for latents ``z`` of shape ``(B, latent_dim)``."""
        decoded: Tensor = self.decoder(self.decoder_input(z))
        if self.config.grey:  # one grey channel, the same in every image channel
            return decoded.repeat(1, self.config.in_chs, 1, 1)
        return decoded

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_hat, mu, logvar, z)``: encode, sample, decode."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z


def build_vae(config: ModelConfig) -> ResNetVAE:
    """The VAE of ``config``."""
    return ResNetVAE(config)


def build_discriminator(
    config: ModelConfig,
    *,
    norm: Literal["batch", "instance", "group", "none"] = "batch",
    spectral_norm: bool = False,
    scales: int = 1,
) -> nn.Module:
    """The PatchGAN discriminator of ``config`` (mixelbo's; the authors' layout by default).

    Args:
        config: the architecture (channels, strides, dropout of the PatchGAN).
        norm: normalization after each hidden conv (``"batch"``: the paper).
        spectral_norm: spectral normalization of the convolutions.
        scales: ``> 1`` builds a :class:`mixelbo.MultiScaleDiscriminator` of that many
            PatchGANs on successively halved images.
    """
    options: dict[str, Any] = dict(
        channels=config.disc_channels, strides=config.disc_strides, dropout=config.disc_dropout,
        norm=norm, spectral_norm=spectral_norm,
    )  # fmt: skip
    if scales > 1:
        return MultiScaleDiscriminator(config.in_chs, num_scales=scales, **options)
    return PatchDiscriminator(config.in_chs, **options)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (what the paper's '9.9 M' counts, up to BN statistics)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
