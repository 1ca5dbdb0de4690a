"""Write a trained model's E and G, with its config and audio front end, to one file.

Sources: a training run (`--workdir DIR`, newest checkpoint or `--step N`), a model file
(`--model FILE`), or the reference's PyTorch state dicts (`--torch-embedder voice_embedding.pth
--torch-generator generator.pth`). Formats: `.safetensors` (default) or `.msgpack`, chosen by
--out's extension; or `--format torch`: --out is a directory that gets the reference's
`voice_embedding.pth` and `generator.pth` (wen2019 models; needs torch). Every source is checked
in full before anything is written (config, front end, every tensor's shape, dtype and
finiteness); files are written with the permissions the umask gives, whole or not at all: the
new file replaces --out in one rename, so a command reading the old one (generate, eval) goes on
reading it whole, and an export killed or out of disk space leaves the old file as it was.

Exit status: 0 written, 2 a bad argument, a source that cannot be used (each problem named), or
a write that failed (a full disk: the file named, nothing half written left).

Examples:
  v2f export --workdir runs/wen2019 --out wen2019.safetensors
  v2f export --model wen2019.safetensors --format torch --out pth/
  v2f export --torch-embedder voice_embedding.pth --torch-generator generator.pth \\
      --out ref.safetensors
"""

from __future__ import annotations

import argparse
import os

from v2f_jax.commands import arguments


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-source flags shared by `export`, `eval` and `generate`."""
    parser.add_argument("--workdir", help="a `v2f train` workdir (its newest checkpoint)")
    parser.add_argument("--model", help="a model file from `v2f export` (.safetensors/.msgpack)")
    parser.add_argument(
        "--step",
        type=arguments.non_negative_int,
        default=None,
        help="with --workdir: this checkpoint",
    )
    parser.add_argument(
        "--torch-embedder", metavar="PTH", help="the reference's voice_embedding.pth"
    )
    parser.add_argument("--torch-generator", metavar="PTH", help="the reference's generator.pth")


# What loading a model source (and using it) raises for bad input: a model file, state dict or
# front end that does not fit is a ValueError (model_files.ModelFileError,
# torch_state_dicts.StateDictError, generate.FrontendMismatchError), a missing or unreadable file
# an OSError, no torch ImportError.
SOURCE_ERRORS = (ValueError, ImportError, OSError, RuntimeError)


def load_source(args: argparse.Namespace):
    """The `inference.model.Model` the source flags name (`sources.load_any`)."""
    from v2f_jax.inference import sources

    return sources.load_any(
        model=args.model,
        workdir=args.workdir,
        torch_embedder=args.torch_embedder,
        torch_generator=args.torch_generator,
        step=args.step,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="output file, or directory for --format torch")
    parser.add_argument(
        "--format",
        choices=("safetensors", "msgpack", "torch"),
        default=None,
        help="default: from --out's extension (.safetensors or .msgpack)",
    )


def run(args: argparse.Namespace) -> int:
    from v2f_jax.inference import model_files, torch_state_dicts

    fmt = args.format
    if fmt is None:
        suffix = os.path.splitext(args.out)[1]
        fmt = suffix[1:] if suffix in model_files.SUFFIXES else None
        if fmt is None:
            return arguments.usage_error(
                "export",
                f"{args.out}: end it in .safetensors or .msgpack, or pass --format torch (then "
                "--out is a directory)",
            )
    try:
        model = load_source(args)
        if fmt == "torch":
            paths = torch_state_dicts.export_torch(model, args.out)
        else:
            out = args.out
            if not out.endswith(f".{fmt}"):
                out += f".{fmt}"
            paths = (model_files.save_model(model, out),)
    except SOURCE_ERRORS as err:
        return arguments.usage_error("export", err)
    src = model.source
    where = src.get("workdir") or src.get("torch_generator") or args.model
    step = f" (step {src['step']})" if "step" in src else ""
    print(
        f"v2f export: {model.config.model.arch} model from {where}{step}, front end "
        f"{model.frontend_name} -> {', '.join(paths)}"
    )
    return 0
