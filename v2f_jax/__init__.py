"""v2f-jax: faces from voices, a JAX/Flax GAN after Wen, Singh & Raj (NeurIPS 2019)."""

__version__ = "0.1.0"
