"""Training on your own data: the README's commands, run as written (with fewer steps) on a
synthetic corpus, and the records' front end carried into the model that comes out."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from v2f_jax import config_lib, train
from v2f_jax.evaluation import evaluate
from v2f_jax.inference import model_files
from v2f_jax.inference.model import init_model
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.input_pipeline import prepare
from v2f_jax.synthetic import writer

REPO = pathlib.Path(__file__).resolve().parents[1]
# Appended to the README's commands to make them quick; nothing else is changed.
QUICK = {
    "v2f synth": "--utterances 2 --faces 2",
    "v2f train --config configs/embedder.py:tiny": (
        "--config.train.steps=4 --config.train.batch_size=8 --config.checkpoint.every=4 "
        "--config.train.log_every=2"
    ),
    "v2f train --config configs/recipe.py:tiny": (
        "--config.train.steps=4 --config.train.batch_size=8 --config.checkpoint.every=4 "
        "--config.train.log_every=2 --config.train.sample_every=4"
    ),
    "v2f eval": "--config.eval.face_embedder_steps=4 --max-train-voices 8",
}


def readme_commands(after: str) -> list[str]:
    """The commands of the first ```bash block after the line containing `after`."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(after) :], re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_recipe_for_your_own_data_runs_end_to_end(tmp_path):
    commands = readme_commands("The same recipe at the demo's size")
    assert [c.split()[1] for c in commands] == [
        "synth", "prepare", "train", "train", "eval", "export", "generate",
    ]  # fmt: skip
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the README's paths are the repo's
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    for command in commands:
        extra = next((v for k, v in QUICK.items() if command.startswith(k)), "")
        result = subprocess.run(
            f"{command} {extra}", shell=True, cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr[-3000:])

    e_config = json.loads((tmp_path / "runs/tiny-embedder/config.json").read_text())
    gan_config = json.loads((tmp_path / "runs/tiny/config.json").read_text())
    assert e_config["train"]["task"] == "embedder" and e_config["model"]["embed_dim"] == 16
    assert gan_config["train"]["embedder_init"] == "runs/tiny-embedder"
    # The recipe's G draws its coarse face by a linear map of the voice, and its network is held
    # to that map: what carries to new voices.
    assert gan_config["model"]["coarse_cell"] == 8
    assert gan_config["train"]["face_target_weight"] == 5
    assert gan_config["train"]["face_target_pool"] == 8
    model = model_files.load_model(tmp_path / "tiny.safetensors")
    assert np.any(model.generator["coarse"]["kernel"] != 0)  # fitted, not as initialised
    assert gan_config["data"]["frontend"] == "wen2019"
    assert model.source["step"] == 4 and model.frontend_name == "wen2019"
    report = json.loads((tmp_path / "runs/tiny/eval/eval.json").read_text())
    assert 0 <= report["matching_1v2"] <= 1
    faces = json.loads((tmp_path / "tiny-faces/generate.json").read_text())["items"]
    assert faces and all((tmp_path / "tiny-faces" / item["png"]).is_file() for item in faces)


def test_the_records_front_end_is_the_models_and_eval_takes_its_records(tmp_path):
    corpus = writer.make_corpus(tmp_path / "corpus", identities=8, utterances=2, faces=2)
    inputs = (corpus["voices_dir"], corpus["faces_dir"], corpus["meta"], tmp_path / "records")
    prepare.prepare(*inputs, frontend="librosa", workers=1, progress=False)
    records = manifest_lib.Records.open(tmp_path / "records")
    config = train.resolve_config(config_lib.load_config(REPO / "configs" / "tiny.py"), records)
    assert config.data.frontend == "librosa"
    path = model_files.save_model(init_model(config), tmp_path / "model.safetensors")
    model = model_files.load_model(path)
    assert model.frontend_name == "librosa" and model.frontend["name"] == "librosa"
    result = evaluate.evaluate(model, records, tmp_path / "eval", face_embedder_steps=2,
                               max_train_voices=4, log=lambda _: None)  # fmt: skip
    assert np.isfinite(result["matching_1v2"])

    # An E pretrained on the other front end's features does not fit these records.
    other = tmp_path / "embedder_run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"data": {"frontend": "wen2019"}}))
    gan = config_lib.load_config(REPO / "configs" / "tiny.py", [f"train.embedder_init={other}"])
    with pytest.raises(config_lib.ConfigError, match="trained on 'wen2019' features"):
        train.resolve_config(gan, records)
