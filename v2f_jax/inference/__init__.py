"""Using trained models: the `Model` type, its files and sources, the reference's PyTorch layout,
voices to faces, and the images written from them.

Nothing is imported here: `v2f_jax.inference.images` and `.generate` stay free of the model-file
and checkpoint modules, so the training loop's sample grid can use them alone.
"""
