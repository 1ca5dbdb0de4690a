"""The operations the networks compute, with one API each (`conv`) and exact per-backend
reformulations behind it (`cpu`)."""

from v2f_jax.ops import conv

__all__ = ["conv"]
