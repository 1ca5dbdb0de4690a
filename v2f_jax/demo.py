"""`v2f demo`: the whole pipeline on the built-in synthetic corpus, in a few minutes on a CPU.

synthesise -> prepare -> pretrain E (speaker classification, as the reference's
`voice_embedding.pth`, and a coarse picture of each speaker's face) -> train the GAN with E
frozen (configs/recipe.py:tiny) -> export -> evaluate (and evaluate G as the run initialised it:
its coarse map, fitted before training, with its network untrained) -> generate faces for
held-out voices. Every stage writes where the real commands would, under one directory, and a
rerun reuses what is finished (the corpus, the records' shards, the training checkpoints).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable

from v2f_jax import files
from v2f_jax.input_pipeline import manifest as manifest_lib

# Tuned so the run takes under 5 minutes on 2 CPU cores and 1:2 matching is clearly above
# chance. 128 identities give 42 held-out ones (A-E names, about 3.5 points of standard error)
# and 86 to learn from: with 42, G memorised its speakers and stayed near 60% on new ones. 12
# faces each keep the critics' identity classifier from memorising a few photos. With E random,
# every voice embeds to nearly the same unit vector (cosine ~0.998) and nothing is learnt; 3000
# steps of E's pretraining (~25 s: speaker classification and its speaker's coarse face) make E
# hear what a face shows (6000 gave no more over four corpora). 600 GAN steps match 800.
# Utterances as long as VoxCeleb1's (4-30 s of speech, median ~7 s) rather than 2.5-4.5 s files:
# what a voice tells of a face in prosody (speaking rate, pitch range) needs seconds of speech to
# be heard, and real corpora have them (README: +1.5 points of 1:2 matching and +2.3 same gender
# on average over eight corpora, for ~10 s more of synthesis and preparation). The GAN at batch 64
# rather than E's 32: +1.9 points on average over the same eight corpora, paired (7 of 8 gained),
# for ~60 s more of training.
DEFAULTS = {
    "identities": 128,
    "utterances": 4,
    "durations": "voxceleb",
    "faces": 12,
    "embedder_steps": 3000,
    "steps": 600,
    "embedder_batch_size": 32,
}
# E's pretraining and the GAN recipe at the size of configs/tiny.py, as the README's own-data
# commands run them at full size.
GAN_CONFIG = f"{importlib.util.find_spec('v2f_jax.configs.recipe').origin}:tiny"
EMBEDDER_CONFIG = f"{importlib.util.find_spec('v2f_jax.configs.embedder').origin}:tiny"


@dataclasses.dataclass
class DemoResult:
    out_dir: str
    eval: dict
    untrained_eval: dict | None
    eval_md: str
    picture: str
    faces_sheet: str | None
    seconds: dict
    coarse_map: bool = False  # G draws its coarse face by a fitted map (`model.coarse_cell`)


def run_demo(
    out_dir: str | os.PathLike,
    *,
    identities: int = DEFAULTS["identities"],
    utterances: int = DEFAULTS["utterances"],
    durations: str = DEFAULTS["durations"],
    faces: int = DEFAULTS["faces"],
    embedder_steps: int = DEFAULTS["embedder_steps"],
    steps: int = DEFAULTS["steps"],
    embedder_batch_size: int = DEFAULTS["embedder_batch_size"],
    batch_size: int | None = None,
    config_overrides: tuple[str, ...] | list[str] = (),
    baseline: bool = True,
    seed: int = 0,
    corpus_kind: str = "a",
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Runs every stage into `out_dir`; returns the figures and the paths of the report.
    `batch_size`: the GAN's, default the recipe's (configs/recipe.py:tiny)."""
    from v2f_jax import config_lib, train
    from v2f_jax.evaluation import evaluate, metrics
    from v2f_jax.inference import generate, model_files, sources
    from v2f_jax.inference.model import init_model
    from v2f_jax.input_pipeline import prepare
    from v2f_jax.synthetic import writer

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus, records_dir = out / "corpus", out / "records"
    e_workdir, workdir = out / "embedder", out / "run"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 1)
        log(f"{name}: {seconds[name]:.1f} s")

    start = time.perf_counter()
    if not (corpus / "vox1_meta.csv").exists():
        summary = writer.make_corpus(
            corpus,
            identities=identities,
            utterances=utterances,
            faces=faces,
            durations=durations,
            seed=seed,
            corpus=corpus_kind,
            overwrite=True,
            workers=min(2, os.cpu_count() or 1),
        )
        log(
            f"synthesised {summary['identities']} identities ({summary['train_identities']} "
            f"train, {summary['test_identities']} test) in {corpus}"
        )
    stage("synth", start)

    start = time.perf_counter()
    prepare.prepare(
        corpus / "voices",
        corpus / "faces",
        corpus / "vox1_meta.csv",
        records_dir,
        workers=min(2, os.cpu_count() or 1),
        progress=False,
    )
    stage("prepare", start)
    records = manifest_lib.Records.open(records_dir)

    # The split is small: held in host memory, each batch is a numpy gather instead of a parse
    # of records, the same batches at half E's pretraining time on 2 cores.
    common = [f"seed={seed}", "data.in_host_memory=True"]
    start = time.perf_counter()
    e_config = config_lib.load_config(
        EMBEDDER_CONFIG,
        [f"train.steps={embedder_steps}", f"train.batch_size={embedder_batch_size}", *common],
    )
    e_result = train.train(e_config, e_workdir, records)
    stage("pretrain_embedder", start)
    face_loss = e_result.get("train/e_face_loss")
    log(
        f"voice embedder: speaker accuracy {e_result.get('train/e_acc', float('nan')):.2f} on "
        f"training crops after {embedder_steps} steps"
        + ("" if face_loss is None else f", face-target loss {face_loss:.2f} (1: the mean face)")
    )

    start = time.perf_counter()
    config = config_lib.load_config(
        GAN_CONFIG,
        [
            f"train.steps={steps}",
            *([f"train.batch_size={batch_size}"] if batch_size else []),
            f"train.embedder_init={e_workdir}",
            *common,
            *config_overrides,
        ],
    )
    train.train(config, workdir, records)
    stage("train", start)

    start = time.perf_counter()
    model = sources.model_from_workdir(workdir)
    model_path = model_files.save_model(model, out / "model.safetensors")
    eval_dir = out / "eval"
    result = evaluate.evaluate(model, records, eval_dir, log=log)
    stage("eval", start)

    untrained = None
    if baseline:
        # The same E, and G as step 0 of the run: its network as initialised, its coarse map
        # (fitted before training, never trained) as the trained G's. So this measures what
        # training G added.
        start = time.perf_counter()
        generator = init_model(model.config).generator
        if "coarse" in generator:
            generator = generator | {"coarse": model.generator["coarse"]}
        fresh = dataclasses.replace(
            model, generator=generator, source={"untrained_generator": True, "step": 0}
        )
        untrained = evaluate.evaluate(
            fresh,
            records,
            out / "eval_untrained",
            face_embedder_path=eval_dir / "face_embedder.safetensors",
            baseline=False,  # the trained model's report has it
            log=log,
        )
        stage("eval_untrained", start)

    start = time.perf_counter()
    held_out = _held_out_voices(corpus, records, out / "held_out_voices")
    faces_result = generate.generate(model_files.load_model(model_path), held_out, out / "faces")
    stage("generate", start)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    files.write_text(
        out / "demo.json",
        json.dumps(
            {
                "seconds": seconds,
                "eval": {k: result[k] for k in metrics.METRICS},
                "untrained_eval": {k: untrained[k] for k in metrics.METRICS} if untrained else None,
                "nearest_identity_baseline": {
                    k: v
                    for k, v in result.get("baselines", {}).get("nearest_identity", {}).items()
                    if k in metrics.METRICS
                }
                or None,
                "settings": {
                    "corpus": corpus_kind,
                    "identities": identities,
                    "utterances": utterances,
                    "durations": durations,
                    "faces": faces,
                    "embedder_steps": embedder_steps,
                    "steps": steps,
                    "embedder_batch_size": embedder_batch_size,
                    "batch_size": int(config.train.batch_size),
                    "config_overrides": list(config_overrides),
                },
            },
            indent=2,
        )
        + "\n",
    )
    return DemoResult(
        out_dir=str(out),
        eval=result,
        untrained_eval=untrained,
        eval_md=str(eval_dir / "eval.md"),
        picture=str(eval_dir / "eval.png"),
        faces_sheet=faces_result.contact_sheet,
        seconds=seconds,
        coarse_map=bool(int(config.model.coarse_cell)),
    )


def _held_out_voices(
    corpus: pathlib.Path, records: manifest_lib.Records, out: pathlib.Path
) -> list[str]:
    """One wav of each test identity (never seen in training), copied to `out/<Name>.wav` so
    the faces drawn from them are named after the speaker."""
    out.mkdir(parents=True, exist_ok=True)
    wavs = []
    for name, info in sorted(records.identities("test").items(), key=lambda kv: kv[1]["label"]):
        for vid in info.get("voxceleb_ids", []):
            found = sorted((corpus / "voices" / vid).glob("*/*.wav"))
            if found:
                wavs.append(str(out / f"{name}.wav"))
                shutil.copyfile(found[0], wavs[-1])
                break
    return wavs


def summary(r: DemoResult) -> str:
    """The closing lines: the figures against chance and the untrained baseline, then paths."""
    e, u = r.eval, r.untrained_eval
    pct = lambda x: f"{100 * x:.1f}%"
    untrained = (
        "G's network untrained (its coarse map alone)" if r.coarse_map else "untrained generator"
    )
    base = f", {untrained} {pct(u['matching_1v2'])}" if u else ""
    nearest = e.get("baselines", {}).get("nearest_identity")
    if nearest:
        base += f", nearest training identity's mean face {pct(nearest['matching_1v2'])}"
    c = e["counts"]
    lines = [
        f"1:2 matching {pct(e['matching_1v2'])} (chance 50%{base}) on "
        f"{c['test_voices']} voices of {c['test_identities']} held-out identities; same gender "
        f"{pct(e['matching_1v2_gender'])}",
        f"recall@1 {pct(e['recall_at_1'])} (gallery of {c['gallery_size']}), identity top-1 "
        f"{pct(e['id_top1'])} of {c['train_identities']} training identities",
        f"took {r.seconds['total']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items() if k != "total"),
    ]
    if r.faces_sheet:
        lines.append(f"faces for held-out voices: {r.faces_sheet}")
    lines += [f"report: {r.eval_md}", f"picture: {r.picture}"]
    return "\n".join(lines)
