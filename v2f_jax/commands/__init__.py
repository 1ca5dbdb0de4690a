"""One module per `v2f` subcommand: `add_arguments(parser)` and `run(args) -> int`.

Modules import their heavy libraries (TensorFlow, JAX) inside `run`, so `v2f --help` stays fast.
"""
