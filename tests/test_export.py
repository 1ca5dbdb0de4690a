"""`v2f export`: our model file round trip, and the reference's PyTorch state dicts both ways."""

import collections
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2f_jax import cli, config_lib, models
from v2f_jax import state as state_lib
from v2f_jax.inference import model_files, sources, torch_state_dicts
from v2f_jax.inference.model import model_from_state
from v2f_jax.input_pipeline import constants


def _model(arch="wen2019"):
    """A tiny-config model with random E and G (built once per arch; tests must not mutate it)."""
    return _build_model(arch)


@functools.cache
def _build_model(arch, num_ids=7, seed=0, upsample=None, blur=False, out_kernel=1, coarse_cell=0):
    """`upsample` None: the reference's transposed convs for wen2019 (what converts to PyTorch,
    whatever configs/tiny.py draws with), the paper's own form for paper."""
    config = config_lib.load_config("configs/tiny.py")
    config.model.arch = arch
    config.model.upsample = (
        ("deconv" if arch == "wen2019" else "") if upsample is None else upsample
    )
    config.model.upsample_blur = blur
    config.model.gen_out_kernel = out_kernel
    config.model.coarse_cell = coarse_cell
    config.model.num_ids = num_ids
    config.seed = seed
    nets = models.Networks(config.model, num_ids)
    rng = np.random.default_rng(seed)
    k_e, k_g = jax.random.split(jax.random.PRNGKey(seed))
    embedder = jax.jit(lambda k: state_lib.init_embedder(nets, k))(k_e)
    generator = jax.jit(lambda k: nets.generator.init(k, jnp.zeros((1, nets.embed_dim))))(k_g)
    if coarse_cell:  # a coarse map as a fit would set it (zero at initialisation)
        coarse = jax.tree_util.tree_map(
            lambda x: np.asarray(rng.normal(0, 0.3, x.shape), np.float32),
            generator["params"]["coarse"],
        )
        generator = {"params": generator["params"] | {"coarse": coarse}}
    # Non-trivial running statistics, so a swapped mean/var or scale/bias would show.
    stats = jax.tree_util.tree_map(
        lambda x: np.asarray(rng.uniform(0.5, 1.5, x.shape), np.float32), embedder["batch_stats"]
    )
    gan = types.SimpleNamespace(
        step=np.int32(0),
        embedder={"params": embedder["params"], "batch_stats": stats},
        generator=generator["params"],
    )
    return model_from_state(config, gan, {"test": True}), nets


def _outputs(model, nets, mel, emb):
    raw = nets.embedder.apply(model.embedder, jnp.asarray(mel))
    face = nets.generator.apply({"params": model.generator}, jnp.asarray(emb))
    return np.asarray(raw), np.asarray(face)


@pytest.mark.parametrize(
    "arch,suffix", [("wen2019", ".safetensors"), ("wen2019", ".msgpack"), ("paper", ".safetensors")]
)
def test_model_file_round_trip(tmp_path, arch, suffix):
    model, nets = _model(arch)
    path = model_files.save_model(model, tmp_path / f"model{suffix}")
    loaded = model_files.load_model(path)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded.frontend == model.frontend and loaded.frontend_name == "wen2019"
    assert loaded.source == model.source
    leaves = lambda m: jax.tree_util.tree_leaves_with_path((m.embedder, m.generator))
    for (pa, a), (pb, b) in zip(leaves(model), leaves(loaded), strict=True):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(1)
    mel, emb = rng.normal(size=(2, 96, 64)), rng.normal(size=(2, 16))
    for a, b in zip(_outputs(model, nets, mel, emb), _outputs(loaded, loaded.networks(), mel, emb)):
        np.testing.assert_array_equal(a, b)


def test_safetensors_file_reads_without_v2f(tmp_path):
    from safetensors import numpy as st_numpy
    from safetensors import safe_open

    model, _ = _model()
    path = model_files.save_model(model, tmp_path / "m.safetensors")
    tensors = st_numpy.load_file(path)
    assert tensors["generator/deconv0/kernel"].shape == (4, 4, 16, 128)
    assert tensors["embedder/batch_stats/bn0/var"].shape == (32,)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "v2f-model" and '"name": "wen2019"' in meta["frontend"]


def test_bad_model_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(model_files.ModelFileError, match="not a v2f model"):
        model_files.load_model(junk)
    with pytest.raises(FileNotFoundError):
        model_files.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="must end in"):
        model_files.save_model(_model()[0], tmp_path / "model.bin")


def test_torch_layout_round_trip_without_torch():
    model, _ = _model()
    e_sd = torch_state_dicts.embedder_to_torch(model.embedder)
    g_sd = torch_state_dicts.generator_to_torch(model.generator)
    assert list(e_sd) == [
        f"model.{i}.{n}"
        for i, names in [
            (0, ["weight"]),
            (1, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
            (3, ["weight"]),
            (4, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
            (6, ["weight"]),
            (7, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
            (9, ["weight"]),
            (10, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
            (12, ["weight", "bias"]),
        ]
        for n in names
    ]
    assert list(g_sd) == [f"model.{i}.{n}" for i in (0, 2, 4, 6, 8, 10) for n in ("weight", "bias")]
    assert e_sd["model.0.weight"].shape == (32, 64, 3)  # Conv1d [out, in, k]
    assert g_sd["model.0.weight"].shape == (16, 128, 4, 4)  # ConvTranspose2d [in, out, kh, kw]
    back_e = torch_state_dicts.embedder_from_torch(e_sd)
    back_g = torch_state_dicts.generator_from_torch(
        collections.OrderedDict(("module." + k, v) for k, v in g_sd.items())
    )  # nn.DataParallel's prefix is dropped
    jax.tree_util.tree_map(np.testing.assert_array_equal, back_e, model.embedder)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back_g, model.generator)
    config = torch_state_dicts.model_config_from_torch(e_sd, g_sd)
    assert config.model.voice_channels == (32, 32, 48, 48)
    assert config.model.gen_channels == (128, 64, 32, 32, 16) and config.model.embed_dim == 16
    with pytest.raises(torch_state_dicts.StateDictError, match="missing 'model.12.bias'"):
        torch_state_dicts.embedder_from_torch(
            {k: v for k, v in e_sd.items() if k != "model.12.bias"}
        )
    with pytest.raises(torch_state_dicts.StateDictError, match="only the wen2019 generator"):
        torch_state_dicts.generator_to_torch(_model("paper")[0].generator)


# ------------------------------------------------------------------------- against PyTorch itself


def _reference_networks(e_channels, g_channels, embed_dim):
    """The reference's VoiceEmbedNet and Generator (needs torch)."""
    from v2f_jax.inference import torch_reference as ref

    e_net = ref.VoiceEmbedNet(constants.N_MELS, e_channels, embed_dim)
    return e_net, ref.Generator(embed_dim, g_channels, 3)


def _torch_outputs(torch, e_net, g_net, mel, emb):
    e_net.eval()
    g_net.eval()
    with torch.no_grad():
        raw = e_net(torch.from_numpy(mel.transpose(0, 2, 1).copy()))  # [B, 64, T]
        face = g_net(torch.from_numpy(emb[:, :, None, None].copy()))  # [B, 3, 64, 64]
    return raw.numpy()[:, :, 0, 0], face.numpy().transpose(0, 2, 3, 1)


SIZES = {
    "tiny": dict(e=(32, 32, 48, 48), g=(128, 64, 32, 32, 16), dim=16),
    "wen2019": dict(e=(256, 384, 576, 864), g=(1024, 512, 256, 128, 64), dim=64),
}


@pytest.mark.parametrize("size", ["tiny", "wen2019"])
def test_reference_pth_files_import_and_match_pytorch(tmp_path, size):
    torch = pytest.importorskip("torch")
    s = SIZES[size]
    torch.manual_seed(0)
    e_net, g_net = _reference_networks(s["e"], s["g"], s["dim"])
    with torch.no_grad():  # trained-looking BatchNorm: running stats and affine away from 0/1
        for m in e_net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(1234)
    torch.save(e_net.state_dict(), tmp_path / "voice_embedding.pth")
    torch.save(g_net.state_dict(), tmp_path / "generator.pth")

    model = sources.model_from_torch(tmp_path / "voice_embedding.pth", tmp_path / "generator.pth")
    assert model.frontend_name == "wen2019" and model.config.model.embed_dim == s["dim"]
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(2, 96, 64)).astype(np.float32)
    emb = rng.normal(size=(2, s["dim"])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ours = _outputs(model, model.networks(), mel, emb)
    ref = _torch_outputs(torch, e_net, g_net, mel, emb)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-5, rtol=1e-4)


def test_our_model_exports_to_pytorch_and_matches(tmp_path):
    torch = pytest.importorskip("torch")
    model, nets = _model()
    e_path, g_path = torch_state_dicts.export_torch(model, tmp_path)
    e_net, g_net = _reference_networks((32, 32, 48, 48), (128, 64, 32, 32, 16), 16)
    e_net.load_state_dict(torch.load(e_path, weights_only=True), strict=True)
    g_net.load_state_dict(torch.load(g_path, weights_only=True), strict=True)
    rng = np.random.default_rng(2)
    mel = rng.normal(size=(2, 96, 64)).astype(np.float32)
    emb = rng.normal(size=(2, 16)).astype(np.float32)
    for a, b in zip(_outputs(model, nets, mel, emb), _torch_outputs(torch, e_net, g_net, mel, emb)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="only wen2019"):
        torch_state_dicts.export_torch(_model("paper")[0], tmp_path / "paper")


def test_export_command_converts_between_formats(tmp_path):
    pytest.importorskip("torch")
    model, nets = _model()
    src = model_files.save_model(model, tmp_path / "ours.safetensors")
    assert (
        cli.main(["export", "--model", src, "--format", "torch", "--out", str(tmp_path / "pth")])
        == 0
    )
    assert (
        cli.main(
            [
                "export",
                "--torch-embedder",
                str(tmp_path / "pth" / "voice_embedding.pth"),
                "--torch-generator",
                str(tmp_path / "pth" / "generator.pth"),
                "--out",
                str(tmp_path / "back.msgpack"),
            ]
        )
        == 0
    )
    back = model_files.load_model(tmp_path / "back.msgpack")
    rng = np.random.default_rng(3)
    mel, emb = rng.normal(size=(2, 96, 64)), rng.normal(size=(2, 16))
    for a, b in zip(_outputs(model, nets, mel, emb), _outputs(back, back.networks(), mel, emb)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert cli.main(["export", "--model", src, "--out", str(tmp_path / "x.bin")]) == 2


@pytest.mark.parametrize(
    "upsample,blur,out_kernel,coarse_cell",
    [
        ("deconv", True, 1, 0),
        ("deconv", False, 3, 0),  # the reference's G but for a 3x3 last layer
        ("deconv", False, 1, 8),  # the reference's G but with a coarse map
        ("nearest", False, 1, 0),
        ("bilinear", False, 1, 0),
        ("bilinear", False, 3, 4),
        ("conv_bilinear", False, 1, 0),
        ("subpixel", True, 1, 0),
    ],
)
def test_every_generator_form_round_trips_and_draws_but_has_no_torch_layout(
    tmp_path, upsample, blur, out_kernel, coarse_cell
):
    from v2f_jax.inference import generate, validate

    model, nets = _build_model(
        "wen2019", upsample=upsample, blur=blur, out_kernel=out_kernel, coarse_cell=coarse_cell
    )
    want = validate.expected_shapes(model.config)
    got = jax.tree_util.tree_map(np.shape, model.generator)
    flat = {f"generator/{k}/{p}": v for k, d in got.items() for p, v in d.items()}
    assert flat == {k: v for k, v in want.items() if k.startswith("generator/")}
    path = model_files.save_model(model, tmp_path / "model.safetensors")
    loaded = model_files.load_model(path)
    assert models.generator_form(loaded.config.model) == (upsample, blur)
    assert loaded.config.model.gen_out_kernel == out_kernel
    assert loaded.config.model.coarse_cell == coarse_cell
    emb = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_array_equal(
        generate.generate_faces(loaded.config, loaded.generator, emb),
        generate.generate_faces(model.config, model.generator, emb),
    )
    # The reference's PyTorch generator is transposed convs without blur and a 1x1 last layer:
    # refused by name.
    with pytest.raises(ValueError, match="model.coarse_cell" if coarse_cell else "model.upsample"):
        torch_state_dicts.export_torch(model, tmp_path / "pth")
    assert not (tmp_path / "pth").exists()
    out = str(tmp_path / "pth2")
    assert cli.main(["export", "--model", path, "--format", "torch", "--out", out]) == 2
