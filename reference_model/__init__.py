"""Reference ResNetV2 VAE-GAN trainer, data pipeline and evaluation built on mixelbo."""
