"""Pure, jit-able training steps: `(state, batch) -> (state, metrics)`.

Written once for every parallel mode. Under `jax.jit` over a mesh the step sees global arrays and
XLA inserts the collectives; under `jax.pmap` (`axis_name` set) it sees one device's slice and
averages gradients and metrics over `axis_name` itself. Both give the same numbers.

A batch is `{"voice": [B, T, n_mels] float, "voice_len": [B] int32 (optional), "voice_id": [B]
int32, "face": [B, 64, 64, 3] float in [-1, 1], "face_id": [B] int32}`; voices and faces are
unpaired, as the reference samples them. With `voice_len`, only the first `voice_len[b]` frames of
`voice[b]` are voice (the reader pads every crop to the longest crop length: one compiled shape).
The reader's compact form (float16 voices, uint8 faces; device_inputs.py) is accepted too and
expanded first, inside the step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from v2f_jax import losses, models
from v2f_jax import state as state_lib
from v2f_jax.feed import device_inputs
from v2f_jax.training import face_targets as face_targets_lib
from v2f_jax.training import voice_mixup

Metrics = dict[str, jax.Array]


def noisy_unit_embedding(raw, noise_key, noise_std: float, axis_name: str | None = None):
    """unit(unit(raw) + noise_std * N(0, 1)), the reference's embedding perturbation.

    The noise is drawn for the global batch and each device takes its rows, so any number of
    devices sees the same noise as one device. raw `[B_local, D]`.
    """
    b_local, dim = raw.shape
    if axis_name is None:
        noise = jax.random.normal(noise_key, (b_local, dim))
    else:
        n_dev = jax.lax.psum(1, axis_name)
        noise = jax.random.normal(noise_key, (b_local * n_dev, dim))
        noise = jax.lax.dynamic_slice_in_dim(
            noise, jax.lax.axis_index(axis_name) * b_local, b_local
        )
    return models.unit(models.unit(raw) + noise_std * noise)


PRECISIONS = ("default", "high", "highest")


def with_matmul_precision(step: Callable, precision: str) -> Callable:
    """`step` traced under `jax.default_matmul_precision(precision)` ("default": as it is)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"config.model.matmul_precision must be one of {PRECISIONS}, not {precision!r}"
        )
    if precision == "default":
        return step

    def step_at_precision(*args):
        with jax.default_matmul_precision(precision):
            return step(*args)

    return step_at_precision


def make_gan_step(
    config: ml_collections.ConfigDict,
    nets: models.Networks,
    axis_name: str | None = None,
    face_targets: face_targets_lib.FaceTargets | None = None,
) -> Callable:
    """The alternating GAN step: critics (F, D, C) first, then G against the updated critics.

    With `train.r1_weight` > 0, the critics' loss also has that weight / 2 x R1, the mean squared
    gradient norm of D's logit at the real faces; with `train.r1_every` = N > 1, only every N-th
    step computes it, at N x the weight (lazy regularisation, as StyleGAN2), and the metric
    `d_r1` is N x R1 on those steps and 0 between, so its mean over steps is still R1's. With
    `train.face_target_weight` > 0, G's loss also has that weight x the mean squared error
    between its face, pooled (`face_targets`), and its speaker's pooled mean face; with a coarse
    map too (`model.coarse_cell` > 0, `models.Generator`), between G's network's own face and
    the face G draws, both pooled: the drawn face's cell means are the map's, so the term holds
    the network to the map. With `train.voice_mixup` > 0, G draws from blends of two voices, and
    C's loss on its faces and the mean-face term ask for the same blend of their speakers
    (voice_mixup.py).
    """
    optimizer = state_lib.make_optimizer(config.optim)
    embedder = nets.embedder.clone(axis_name=axis_name)
    noise_std = config.train.embed_noise
    ema_decay = float(config.train.ema_decay)
    identity_weight = float(config.train.identity_weight)
    train_embedder = config.train.train_embedder
    shared_trunk = nets.critics.shared_trunk
    face_weight = float(config.train.face_target_weight)
    face_dim = face_targets_lib.target_dim(int(config.train.face_target_pool))
    face_loss = _face_target_loss(face_targets, face_weight, nets.num_ids, face_dim, axis_name)
    # With a coarse map, the mean-face term holds G's network to the cell means the map draws.
    coarse_map = face_loss is not None and int(config.model.coarse_cell) > 0
    mixup_alpha = float(config.train.voice_mixup)
    r1_weight = float(config.train.r1_weight)
    r1_every = int(config.train.r1_every)

    def mean_over_devices(tree):
        return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def embed(e_params, batch_stats, voice, lengths):
        if train_embedder:
            raw, updates = embedder.apply(
                {"params": e_params, "batch_stats": batch_stats},
                voice,
                train=True,
                lengths=lengths,
                mutable=["batch_stats"],
            )
            return raw, updates["batch_stats"]
        raw = embedder.apply(
            {"params": e_params, "batch_stats": batch_stats}, voice, lengths=lengths
        )
        return raw, batch_stats

    def critic_outputs(c_params, real, fake):
        """Adversarial logits for real and fake, identity logits for real: `[B], [B], [B, K]`."""
        b = real.shape[0]
        # One trunk pass over 2B faces, each real face beside its fake: a device's rows of
        # `both` are its own rows of `real` and `fake`, so no collective reshuffles them (a
        # concatenation along the batch moves half of every device's rows to another device).
        both = jnp.stack([real, fake], axis=1).reshape((2 * b, *real.shape[1:]))
        if shared_trunk:
            adv, ids = nets.critics.apply({"params": c_params}, both)
            adv = adv.reshape(b, 2)
            return adv[:, 0], adv[:, 1], ids.reshape(b, 2, -1)[:, 0]
        adv, _ = nets.critics.apply({"params": c_params}, both, method=_adv_only)
        ids = nets.critics.apply({"params": c_params}, real, method=_ids_only)
        adv = adv.reshape(b, 2)
        return adv[:, 0], adv[:, 1], ids

    def r1_penalty(c_params, real):
        """R1: the mean over real faces of |d D(face) / d face|^2 (D's logit)."""
        method = None if shared_trunk else _adv_only

        def adv_sum(faces):
            return jnp.sum(nets.critics.apply({"params": c_params}, faces, method=method)[0])

        grads = jax.grad(adv_sum)(real)
        return jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))

    def r1_term(c_params, real, step):
        """R1 x `r1_every` on the steps that compute it, 0 on the others (a `[]` float32)."""
        if r1_every == 1:
            return r1_penalty(c_params, real)
        # A conditional, not a multiply by 0: the skipped steps never run R1's double backward.
        return jax.lax.cond(
            step % r1_every == 0,
            lambda: r1_every * r1_penalty(c_params, real),
            lambda: jnp.zeros((), jnp.float32),
        )

    def step(state: state_lib.GanState, batch) -> tuple[state_lib.GanState, Metrics]:
        batch = device_inputs.to_model_inputs(batch)
        key = jax.random.fold_in(state.key, state.step)
        voice = batch["voice"]
        if not train_embedder:
            voice = jax.lax.stop_gradient(voice)
        pairs = None
        if mixup_alpha > 0:
            pairs = voice_mixup.draw_pairs(key, batch["voice_id"], mixup_alpha, axis_name)

        def generate(g_params, e_params):
            raw, new_stats = embed(
                e_params, state.embedder["batch_stats"], voice, batch.get("voice_len")
            )
            emb = noisy_unit_embedding(raw, key, noise_std, axis_name)
            if pairs is not None:
                emb = voice_mixup.mix(emb, pairs, axis_name)
            return nets.generator.apply({"params": g_params}, emb, coarse_map), new_stats

        # G (and E, when it trains) forward once; its VJP serves the generator update below.
        e_params = state.embedder["params"]
        if train_embedder:
            drawn, gen_vjp, new_stats = jax.vjp(generate, state.generator, e_params, has_aux=True)
        else:
            drawn, gen_vjp, new_stats = jax.vjp(
                lambda g: generate(g, jax.lax.stop_gradient(e_params)),
                state.generator,
                has_aux=True,
            )
        # With a coarse map, G also gives its network's own face (for the mean-face term).
        fake, network_fake = drawn if coarse_map else (drawn, None)

        # Critics update; `fake` is a constant here, as `fake.detach()` in the reference.
        def critic_loss(c_params):
            real_adv, fake_adv, real_ids = critic_outputs(c_params, batch["face"], fake)
            d_real, d_fake = losses.bce(real_adv, 1.0), losses.bce(fake_adv, 0.0)
            c_loss = losses.xent(real_ids, batch["face_id"])
            metrics = {
                "d_real": d_real,
                "d_fake": d_fake,
                "d_loss": d_real + d_fake,
                "c_loss": c_loss,
                "c_acc": losses.accuracy(real_ids, batch["face_id"]),
            }
            loss = d_real + d_fake + c_loss
            if r1_weight > 0:
                metrics["d_r1"] = r1_term(c_params, batch["face"], state.step)
                loss = loss + 0.5 * r1_weight * metrics["d_r1"]
            return loss, metrics

        c_grads, c_metrics = jax.grad(critic_loss, has_aux=True)(state.critics)
        c_grads = mean_over_devices(c_grads)
        c_metrics["c_grad_norm"] = optax.tree.norm(c_grads)
        c_updates, c_opt = optimizer.update(c_grads, state.c_opt, state.critics)
        critics = optax.apply_updates(state.critics, c_updates)

        # Generator update against the critics just updated (the reference's order).
        def generator_loss(fake_faces, network_faces=None):
            adv, ids = nets.critics.apply({"params": critics}, fake_faces)
            g_adv = losses.bce(adv, 1.0)
            if pairs is None:
                g_id = losses.xent(ids, batch["voice_id"])
            else:
                g_id = voice_mixup.identity_loss(ids, batch["voice_id"], pairs)
            g_loss = g_adv + identity_weight * g_id
            metrics = {"g_adv": g_adv, "g_id": g_id}
            if coarse_map:
                # The drawn face's cell means are the map's, exactly: the network's own are
                # pulled to them, not to the speaker's mean face.
                target = jax.lax.stop_gradient(face_targets.of_faces(fake_faces))
                own = face_targets.of_faces(network_faces)
                metrics["g_face_loss"] = jnp.mean(jnp.square(own - target))
                g_loss = g_loss + face_weight * metrics["g_face_loss"]
            elif face_loss is not None:
                pooled = face_targets.of_faces(fake_faces)
                metrics["g_face_loss"] = face_loss(pooled, batch["voice_id"], pairs)
                g_loss = g_loss + face_weight * metrics["g_face_loss"]
            return g_loss, metrics | {"g_loss": g_loss}

        if coarse_map:
            grads_of_faces, g_metrics = jax.grad(generator_loss, (0, 1), has_aux=True)(
                fake, network_fake
            )
        else:
            grads_of_faces, g_metrics = jax.grad(generator_loss, has_aux=True)(fake)
        vjp_grads = gen_vjp(grads_of_faces)
        g_grads = mean_over_devices(vjp_grads[0])
        g_metrics["g_grad_norm"] = optax.tree.norm(g_grads)
        g_updates, g_opt = optimizer.update(g_grads, state.g_opt, state.generator)
        generator = optax.apply_updates(state.generator, g_updates)

        embedder, e_opt = state.embedder, state.e_opt
        if train_embedder:
            e_grads = mean_over_devices(vjp_grads[1])
            g_metrics["e_grad_norm"] = optax.tree.norm(e_grads)
            e_updates, e_opt = optimizer.update(e_grads, state.e_opt, e_params)
            embedder = {
                "params": optax.apply_updates(e_params, e_updates),
                "batch_stats": new_stats,
            }

        generator_ema = state.generator_ema
        if generator_ema is not None:
            generator_ema = optax.incremental_update(generator, generator_ema, 1.0 - ema_decay)

        new_state = state.replace(
            step=state.step + 1,
            embedder=embedder,
            generator=generator,
            generator_ema=generator_ema,
            critics=critics,
            g_opt=g_opt,
            c_opt=c_opt,
            e_opt=e_opt,
        )
        return new_state, mean_over_devices(c_metrics | g_metrics)

    return with_matmul_precision(step, config.model.matmul_precision)


def _adv_only(critics: models.Critics, face):
    return critics.d_head(critics.d_trunk(face).astype(jnp.float32))[:, 0], None


def _ids_only(critics: models.Critics, face):
    return critics.c_head(critics.c_trunk(face).astype(jnp.float32))


def _face_target_loss(face_targets, weight: float, num_ids: int, dim: int, axis_name):
    """`(prediction [B, P], ids [B]) -> mean squared error to the ids' face targets`, averaged
    over the voices whose identity has a target, of the global batch (also under pmap). None
    when `weight` is 0.

    Raises:
      ValueError: a weight without targets, or targets of another shape than `[num_ids, dim]`.
    """
    if weight <= 0:
        return None
    if face_targets is None:
        raise ValueError("train.face_target_weight > 0 needs the face targets")
    targets = jnp.asarray(face_targets.values, jnp.float32)
    present = jnp.asarray(face_targets.present, jnp.float32)
    if targets.shape != (num_ids, dim):
        raise ValueError(
            f"face targets of shape {targets.shape}; this config wants {(num_ids, dim)}"
        )

    def loss(prediction, ids, pairs=None):
        mask, target = present[ids], targets[ids]
        if pairs is not None:
            # A blend of two voices is drawn toward the same blend of their speakers' faces.
            lam = pairs.lam[:, None]
            target = lam * target + (1.0 - lam) * targets[pairs.partner_ids]
            mask = mask * present[pairs.partner_ids]
        total = jnp.sum(mask * jnp.mean(jnp.square(prediction - target), axis=-1))
        count = jnp.sum(mask)
        if axis_name is not None:
            # Each device's gradient is then averaged: scale so the mean is the global one.
            count = jax.lax.psum(count, axis_name) / jax.lax.psum(1, axis_name)
        return total / jnp.maximum(count, 1.0)

    return loss


def make_embedder_step(
    config: ml_collections.ConfigDict,
    nets: models.Networks,
    num_speakers: int,
    axis_name: str | None = None,
    face_targets: face_targets_lib.FaceTargets | None = None,
) -> Callable:
    """E's pretraining step: cross-entropy over speaker identities, BatchNorm in train mode, plus
    `train.face_target_weight` x the mean squared error of the predicted face target.

    Args:
      face_targets: `face_targets.from_records(...)`; needed when `train.face_target_weight` >
        0. Voices of identities without faces count for the speaker loss only.
    """
    optimizer = state_lib.make_optimizer(config.optim)
    embedder = nets.embedder.clone(axis_name=axis_name)
    head = state_lib.speaker_head(config, num_speakers)
    face_weight = float(config.train.face_target_weight)
    face_loss = _face_target_loss(face_targets, face_weight, num_speakers, head.face_dim, axis_name)

    def step(state: state_lib.EmbedderState, batch):
        batch = device_inputs.to_model_inputs(batch)

        def loss_fn(params):
            raw, updates = embedder.apply(
                {"params": params["embedder"], "batch_stats": state.embedder["batch_stats"]},
                batch["voice"],
                train=True,
                lengths=batch.get("voice_len"),
                mutable=["batch_stats"],
            )
            logits, face_prediction = head.apply({"params": params["head"]}, raw)
            loss = losses.xent(logits, batch["voice_id"])
            metrics = {"e_loss": loss, "e_acc": losses.accuracy(logits, batch["voice_id"])}
            if face_loss is not None:
                metrics["e_face_loss"] = face_loss(face_prediction, batch["voice_id"])
                loss = loss + face_weight * metrics["e_face_loss"]
            return loss, (updates["batch_stats"], metrics)

        params = {"embedder": state.embedder["params"], "head": state.head}
        grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        metrics["e_grad_norm"] = optax.tree.norm(grads)
        updates, opt = optimizer.update(grads, state.opt, params)
        params = optax.apply_updates(params, updates)
        return state.replace(
            step=state.step + 1,
            embedder={"params": params["embedder"], "batch_stats": batch_stats},
            head=params["head"],
            opt=opt,
        ), metrics

    return with_matmul_precision(step, config.model.matmul_precision)
