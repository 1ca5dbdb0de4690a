"""A catalogue of bad inputs, as a careless or hostile user gives them: each is refused (exit 2)
or set aside as a reject, with a message naming the file and the reason, and the good work
around it is kept. (`v2f train`'s own cases are in tests/test_workdir.py.)
"""

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from v2f_jax import cli, config_lib
from v2f_jax.evaluation import evaluate
from v2f_jax.inference import model_files
from v2f_jax.inference.model import init_model
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline import prepare
from v2f_jax.synthetic import writer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("corpus")
    writer.make_corpus(root, identities=8, utterances=2, faces=2, seed=0)
    return root


@pytest.fixture
def own_corpus(corpus, tmp_path) -> pathlib.Path:
    """A copy of the corpus to spoil."""
    shutil.copytree(corpus, tmp_path / "corpus", symlinks=True)
    return tmp_path / "corpus"


def prepare_argv(root: pathlib.Path, out: pathlib.Path, *extra) -> list[str]:
    return ["prepare", "--voices", str(root / "voices"), "--faces", str(root / "faces"),
            "--meta", str(root / "vox1_meta.csv"), "--out", str(out), "--workers", "1",
            "--no-progress", *extra]  # fmt: skip


def rejects(out: pathlib.Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, (out / "rejects.jsonl").open())}


def first(root: pathlib.Path, pattern: str) -> pathlib.Path:
    return sorted(root.glob(pattern))[0]


@pytest.fixture(scope="module")
def clean_counts(corpus, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("clean")
    assert cli.main(prepare_argv(corpus, out)) == 0
    m = manifest_lib.Records.open(out).manifest
    return {s: (e["num_voices"], e["num_faces"]) for s, e in m["splits"].items()}


# --- prepare: one bad file is one reject, and everything good is still prepared ---------------


def test_each_unusable_file_is_a_reject_with_its_reason_and_the_rest_is_prepared(
    own_corpus, clean_counts, tmp_path, capsys
):
    voices, faces = own_corpus / "voices", own_corpus / "faces"
    speaker = first(voices, "id*")
    person = first(faces, "*")
    bad = {}
    (speaker / "loop").symlink_to(speaker)  # a folder that contains itself
    bad[speaker / "loop"] = "a symlink loop"
    (speaker / "self.wav").symlink_to(speaker / "self.wav")
    bad[speaker / "self.wav"] = "a symlink loop"
    (speaker / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    bad[speaker / "gone.wav"] = f"a broken symlink (to {tmp_path / 'deleted.wav'})"
    wav = first(voices, "*/*/*.wav")
    data = wav.read_bytes()
    (wav.parent / "cut.wav").write_bytes(data[: len(data) // 2])  # an interrupted copy
    bad[wav.parent / "cut.wav"] = "truncated WAV: its header promises"
    (speaker / "notes.txt").write_text("not audio\n")
    bad[speaker / "notes.txt"] = "not a supported file type (.txt"
    img = cv2.imread(str(first(person, "*.png")))
    cv2.imwrite(str(person / "photo.gif"), img)  # OpenCV writes PNG bytes; the name says GIF
    bad[person / "photo.gif"] = "not a supported file type (.gif"
    (person / "album.jpg").mkdir()
    (person / "album.jpg" / "inside.png").write_bytes(b"")
    bad[person / "album.jpg"] = "a directory, not a file"
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    (person / "damaged.jpg").write_bytes(jpeg[: len(jpeg) // 2] + jpeg[-2:])  # lost mid-file
    bad[person / "damaged.jpg"] = "Corrupt JPEG data"
    (person / "good.jpg").write_bytes(jpeg)
    os.mkfifo(person / "pipe.png")
    bad[person / "pipe.png"] = "not a regular file"

    out = tmp_path / "records"
    assert cli.main(prepare_argv(own_corpus, out)) == 0
    got = rejects(out)
    assert set(got) == {str(p) for p in bad}
    for path, reason in bad.items():
        assert reason in got[str(path)]["reason"], got[str(path)]
    m = manifest_lib.Records.open(out).manifest
    counts = {s: (e["num_voices"], e["num_faces"]) for s, e in m["splits"].items()}
    split = next(s for s, e in m["splits"].items() if person.name in e["identities"])
    want = dict(clean_counts)
    want[split] = (want[split][0], want[split][1] + 1)  # good.jpg
    assert counts == want
    assert "rejected: 9" in capsys.readouterr().out


def test_the_reference_fbanks_are_not_mixed_into_other_front_ends_records(own_corpus, tmp_path):
    wav = first(own_corpus / "voices", "*/*/*.wav")
    np.save(wav.with_suffix(".npy"), np.ones([200, 64], np.float32))
    out = tmp_path / "records"
    assert cli.main(prepare_argv(own_corpus, out, "--frontend", "librosa")) == 0
    reason = rejects(out)[str(wav.with_suffix(".npy"))]["reason"]
    assert "the reference's wen2019 front end" in reason and "--frontend librosa" in reason
    records = manifest_lib.Records.open(out)
    assert records.frontend["name"] == "librosa"
    assert records.manifest["voice_sources"] == ["audio"]


def _drop_people(root: pathlib.Path, test_split: bool) -> None:
    """Removes the faces of the test (A-E) or the train (F-Z) people."""
    for person in (root / "faces").iterdir():
        if (person.name[0] in "ABCDE") == test_split:
            shutil.rmtree(person)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_split_without_identities_is_an_error(own_corpus, tmp_path, capsys, split):
    _drop_people(own_corpus, test_split=split == "test")
    out = tmp_path / "records"
    assert cli.main(prepare_argv(own_corpus, out)) == 2
    err = capsys.readouterr().err
    assert f"no {split} identities" in err and "--split" in err
    assert not (out / "manifest.json").exists()


def test_a_split_whose_files_are_all_rejected_writes_no_manifest(own_corpus, tmp_path, capsys):
    out = tmp_path / "records"
    assert cli.main(prepare_argv(own_corpus, out)) == 0
    manifest = (out / "manifest.json").read_bytes()
    for wav in own_corpus.glob("voices/*/*/*.wav"):
        meta = own_corpus / "vox1_meta.csv"
        if any(
            line.startswith(wav.parts[-3]) and line.endswith("dev")
            for line in meta.read_text().splitlines()
        ):
            wav.write_bytes(b"RIFF")  # every training voice is garbage
    assert cli.main(prepare_argv(own_corpus, out)) == 2
    err = capsys.readouterr().err
    assert "every one of the train split's voices was rejected" in err
    assert str(out / "rejects.jsonl") in err
    # The earlier good run's manifest is still the one in --out.
    assert (out / "manifest.json").read_bytes() == manifest


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--shards-per-split", "0", "must be at least 1"),
        ("--shards-per-split", "-3", "must be at least 1"),
        ("--workers", "0", "must be at least 1"),
        ("--workers", "many", "not an integer"),
    ],
)
def test_nonsense_numbers_are_usage_errors(corpus, tmp_path, capsys, flag, value, message):
    argv = prepare_argv(corpus, tmp_path / "out")
    if flag in argv:
        i = argv.index(flag)
        del argv[i : i + 2]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["prepare", "generate", "features", "synth", "eval"])
def test_an_existing_file_as_out_is_refused_and_kept(corpus, tmp_path, capsys, command):
    precious = tmp_path / "thesis.pdf"
    precious.write_bytes(b"%PDF-1.7 years of work")
    argv = {
        "prepare": prepare_argv(corpus, precious),
        "generate": ["generate", "--model", "m.safetensors", "--audio", "a.wav"],
        "features": ["features", "--audio", "a.wav"],
        "synth": ["synth"],
        "eval": ["eval", "--model", "m.safetensors", "--records", str(corpus)],
    }[command]
    if "--out" not in argv:
        argv += ["--out", str(precious)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert f"{precious} exists and is not a directory" in capsys.readouterr().err
    assert precious.read_bytes() == b"%PDF-1.7 years of work"


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_nonsense_min_seconds_is_a_usage_error(tmp_path, capsys, value):
    for command in ("generate", "features"):
        argv = [command, "--audio", "a.wav", "--out", str(tmp_path), f"--min-seconds={value}"]
        if command == "generate":
            argv += ["--model", "m.safetensors"]
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "argument --min-seconds" in capsys.readouterr().err


# --- model files: checked in full at load ---------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> pathlib.Path:
    config = config_lib.load_config(REPO / "configs" / "tiny.py")
    config.model.num_ids = 4
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return pathlib.Path(model_files.save_model(init_model(config), path))


@pytest.fixture(scope="module")
def wav(corpus) -> pathlib.Path:
    return first(corpus / "voices", "*/*/*.wav")


def _spoiled(model_file: pathlib.Path, out: pathlib.Path, tensors=None, config=None, **meta):
    with safe_open(str(model_file), "numpy") as f:
        metadata = dict(f.metadata())
    if isinstance(config, str):
        metadata["config"] = config
    elif config is not None:
        cfg = json.loads(metadata["config"])
        for dotted, value in config.items():
            section, key = dotted.split(".")
            cfg[section][key] = value
        metadata["config"] = json.dumps(cfg)
    metadata.update(meta)
    save_file(tensors if tensors is not None else load_file(str(model_file)), str(out), metadata)
    return out


def _nan_in(tensors: dict, name: str) -> dict:
    return {k: (np.full_like(v, np.nan) if k == name else v) for k, v in tensors.items()}


SPOILS = {
    "metadata that is not JSON": (dict(config="{'model': "), "metadata 'config' is missing or"),
    "an unknown arch": (dict(config={"model.arch": "dcgan"}), "config.model.arch='dcgan'"),
    "an unknown dtype": (dict(config={"model.dtype": "float16"}), "config.model.dtype='float16'"),
    "an unknown impl": (dict(config={"model.impl": "im2col"}), "not 'im2col'"),
    "a config that disagrees with the tensors": (
        dict(config={"model.embed_dim": 32}),
        "deconv0/kernel: shape [4, 4, 16, 128], the config's networks have [4, 4, 32, 128]",
    ),
    "an unknown front end": (dict(frontend='{"name": "mfcc"}'), "front end 'mfcc'"),
    "a newer format": (dict(format_version="99"), "model format version 99"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SPOILS))
def test_a_spoilt_model_file_is_named_with_what_is_wrong(model_file, wav, tmp_path, capsys, case):
    kwargs, message = SPOILS[case]
    bad = _spoiled(model_file, tmp_path / "bad.safetensors", **kwargs)
    out = tmp_path / "faces"
    rc = cli.main(["generate", "--model", str(bad), "--audio", str(wav), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}: " in err and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_missing_and_non_finite_tensors_are_named(model_file, wav, tmp_path, capsys):
    tensors = load_file(str(model_file))
    missing = {k: v for k, v in tensors.items() if not k.startswith("generator/deconv3/")}
    nan = _nan_in(tensors, "embedder/params/conv1/kernel")
    negative_var = dict(tensors)
    negative_var["embedder/batch_stats/bn0/var"] = -tensors["embedder/batch_stats/bn0/var"] - 1
    for spoilt, message in (
        (missing, "generator/deconv3/kernel: missing"),
        (nan, "embedder/params/conv1/kernel: 3072 of 3072 values are NaN or infinite"),
        (negative_var, "embedder/batch_stats/bn0/var: negative variances"),
    ):
        bad = _spoiled(model_file, tmp_path / "bad.safetensors", tensors=spoilt)
        assert cli.main(["generate", "--model", str(bad), "--audio", str(wav),
                         "--out", str(tmp_path / "faces")]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert f"{bad}: not a usable v2f model" in err and message in err, err


def test_the_legacy_impl_name_still_loads(model_file, wav, tmp_path):
    old = _spoiled(model_file, tmp_path / "old.safetensors", config={"model.impl": "reference"})
    assert model_files.load_model(old).config.model.impl == "reference"
    out = tmp_path / "faces"
    assert cli.main(["generate", "--model", str(old), "--audio", str(wav), "--out", str(out)]) == 0


def test_a_pytorch_file_as_model_says_how_to_use_it(tmp_path, wav, capsys):
    torch = pytest.importorskip("torch")
    for name in ("voice_embedding.pth", "renamed.safetensors"):
        torch.save({"model.0.weight": torch.zeros(3)}, tmp_path / name)
        rc = cli.main(["generate", "--model", str(tmp_path / name), "--audio", str(wav),
                       "--out", str(tmp_path / "faces")])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and f"{tmp_path / name}: a PyTorch file, not a v2f model" in err
        assert "--torch-embedder voice_embedding.pth --torch-generator generator.pth" in err


def test_export_refuses_state_dicts_of_wrong_shapes_or_nan_weights(model_file, tmp_path, capsys):
    pytest.importorskip("torch")
    from v2f_jax.inference import torch_state_dicts as tsd

    model = model_files.load_model(model_file)
    e_sd, g_sd = tsd.embedder_to_torch(model.embedder), tsd.generator_to_torch(model.generator)
    wrong = dict(e_sd)
    wrong["model.3.weight"] = np.zeros([32, 20, 3], np.float32)  # its input is 32 channels
    nan = dict(g_sd)
    nan["model.4.weight"] = np.full_like(g_sd["model.4.weight"], np.nan)
    for case, e, g, message in (
        ("shape", wrong, g_sd, "embedder/params/conv1/kernel: shape [3, 20, 32]"),
        ("nan", e_sd, nan, "generator/deconv2/kernel:"),
    ):
        e_path, g_path = tmp_path / f"{case}_e.pth", tmp_path / f"{case}_g.pth"
        tsd.save_pth(e, e_path)
        tsd.save_pth(g, g_path)
        out = tmp_path / f"{case}.safetensors"
        rc = cli.main(["export", "--torch-embedder", str(e_path), "--torch-generator",
                       str(g_path), "--out", str(out)])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and f"{e_path} and {g_path}: not a usable pair" in err and message in err
        assert not out.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_files_follow_the_umask(model_file, tmp_path, umask):
    old = os.umask(umask)
    try:
        for suffix in (".safetensors", ".msgpack"):
            out = tmp_path / f"model{suffix}"
            assert cli.main(["export", "--model", str(model_file), "--out", str(out)]) == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask, suffix
    finally:
        os.umask(old)


# --- generate: odd file names and paths ---------------------------------------------------------


def test_a_wav_name_that_is_not_utf8_is_drawn_and_listed(model_file, wav, tmp_path):
    """In a subprocess: OpenCV crashed the interpreter on such a name."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    odd = os.path.join(os.fsencode(inputs), b"caf\xe9.wav")
    shutil.copyfile(wav, odd)
    shutil.copyfile(wav, inputs / "good.wav")
    (inputs / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    out = tmp_path / "faces"
    cmd = [sys.executable, "-m", "v2f_jax.cli", "generate", "--model", str(model_file),
           "--audio", os.fsdecode(odd), str(inputs / "good.wav"), str(inputs / "gone.wav"),
           "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 1, result.stderr.decode(errors="replace")[-3000:]
    assert f"{inputs / 'gone.wav'}: unreadable".encode() in result.stderr
    assert sorted(os.listdir(out)) == ["caf_.png", "contact_sheet.png", "generate.json", "good.png"]
    report = json.loads((out / "generate.json").read_bytes())
    assert [item["path"] for item in report["items"]] == [
        f"{inputs}/caf\\xe9.wav",
        str(inputs / "good.wav"),
        str(inputs / "gone.wav"),
    ]
    assert report["items"][0]["png"] == "caf_.png" and "reason" in report["items"][2]


# --- eval: a figure with nothing to measure ------------------------------------------------------


def test_eval_json_stays_json_when_a_figure_cannot_be_measured(tmp_path, model_file):
    """Two test people of different genders: no same-gender impostor for 1:2 matching."""
    rng = np.random.default_rng(0)
    names = ["Ann_A", "Bob_B", "Fay_F", "Gus_G", "Hal_H", "Ida_I"]
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for i, name in enumerate(names):
        vid = f"id{10001 + i}"
        meta.append(f"{vid}\t{name}\t{'fm'[i % 2]}\tUK\tdev")
        (tmp_path / "fbank" / vid / "v").mkdir(parents=True)
        (tmp_path / "faces" / name).mkdir(parents=True)
        for u in range(2):
            mel = rng.standard_normal([120, 64]).astype(np.float32)
            np.save(tmp_path / "fbank" / vid / "v" / f"{u}.npy", mel)
            img = rng.integers(0, 256, [72, 72, 3], dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "faces" / name / f"{u}.png"), img)
    (tmp_path / "meta.csv").write_text("\n".join(meta) + "\n")
    prepare.prepare(tmp_path / "fbank", tmp_path / "faces", tmp_path / "meta.csv",
                    tmp_path / "records", workers=1, progress=False)  # fmt: skip
    records = manifest_lib.Records.open(tmp_path / "records")
    model = model_files.load_model(model_file)
    result = evaluate.evaluate(model, records, tmp_path / "eval", face_embedder_steps=2,
                               max_train_voices=4, log=lambda _: None)  # fmt: skip
    assert np.isnan(result["matching_1v2_gender"])

    def refuse(name):
        raise AssertionError(f"eval.json holds a bare {name}")

    written = json.loads((tmp_path / "eval" / "eval.json").read_text(), parse_constant=refuse)
    assert written["matching_1v2_gender"] is None
    assert written["matching_1v2"] == pytest.approx(result["matching_1v2"])
