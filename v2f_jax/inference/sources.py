"""Where a model comes from: a training workdir's checkpoint, a model file, or the reference's
PyTorch `voice_embedding.pth` and `generator.pth`."""

from __future__ import annotations

import os

from v2f_jax.inference import model_files, torch_state_dicts, validate
from v2f_jax.inference.model import Model, frontend_of, model_from_state


def model_from_workdir(workdir: str | os.PathLike, step: int | None = None) -> Model:
    """A checkpoint of a training run: the newest complete one, or `step`."""
    # Imported here: orbax is slow to import and only this source needs it.
    from v2f_jax import checkpointing

    config, gan_state = checkpointing.restore_for_inference(os.fspath(workdir), step)
    m = model_from_state(config, gan_state, {"workdir": os.path.abspath(workdir)})
    found = validate.problems(m)
    if found:
        where = f"{workdir} (step {m.source['step']})"
        raise model_files.ModelFileError(f"{where}: not a usable model: {'; '.join(found)}")
    return m


def model_from_torch(embedder_pth: str | os.PathLike, generator_pth: str | os.PathLike) -> Model:
    """The reference's `voice_embedding.pth` and `generator.pth` (needs torch to read them)."""
    e_sd = torch_state_dicts.load_pth(embedder_pth)
    g_sd = torch_state_dicts.load_pth(generator_pth)
    config = torch_state_dicts.model_config_from_torch(e_sd, g_sd)
    m = Model(
        config=config,
        embedder=torch_state_dicts.embedder_from_torch(e_sd),
        generator=torch_state_dicts.generator_from_torch(g_sd),
        frontend=frontend_of(config),
        source={
            "torch_embedder": os.path.abspath(embedder_pth),
            "torch_generator": os.path.abspath(generator_pth),
        },
    )
    found = validate.problems(m)
    if found:
        raise torch_state_dicts.StateDictError(
            f"{embedder_pth} and {generator_pth}: not a usable pair: {'; '.join(found)}"
        )
    return m


def load_any(
    model: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    torch_embedder: str | os.PathLike | None = None,
    torch_generator: str | os.PathLike | None = None,
    step: int | None = None,
) -> Model:
    """Exactly one source: an exported file, a training workdir (at `step`, default the newest
    checkpoint), or a pair of .pth files. A directory given as `model` is taken as a workdir.

    Raises:
      ValueError: no source, several, or only one of the two .pth files (and whatever reading
        the source raises: `model_files.ModelFileError`, `torch_state_dicts.StateDictError`,
        OSError, ImportError without torch).
    """
    given = [
        model is not None,
        workdir is not None,
        (torch_embedder or torch_generator) is not None,
    ]
    if sum(given) != 1:
        raise ValueError(
            "give exactly one model source: --model FILE, --workdir DIR, or "
            "--torch-embedder voice_embedding.pth --torch-generator generator.pth"
        )
    if model is not None:
        if os.path.isdir(model):
            return model_from_workdir(model, step)
        return model_files.load_model(model)
    if workdir is not None:
        return model_from_workdir(workdir, step)
    if not (torch_embedder and torch_generator):
        raise ValueError("--torch-embedder and --torch-generator go together")
    return model_from_torch(torch_embedder, torch_generator)
