"""Wen, Singh & Raj 2019 as their public PyTorch code trains it.

Train (E pretrained first, README "Training on your own data"):
`v2f train --config configs/wen2019.py --records DIR --workdir DIR
--config.train.embedder_init=WORKDIR_OF_configs/embedder.py`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.n_mels = 64
    # The log-mel front end: "" takes the records' (`v2f prepare --frontend`, recorded in their
    # manifest); "wen2019" (reference-exact VAD + filterbank) or "librosa" insists on one.
    cfg.data.frontend = ""
    # The reference crops each batch to a random length in [300, 800] frames. A few static
    # buckets give XLA a handful of shapes to compile instead of 501.
    cfg.data.crop_lengths = (300, 425, 550, 675, 800)
    cfg.data.image_size = 64
    cfg.data.face_flip = True
    cfg.data.shuffle_buffer = 10_000
    # Batches copied to the devices ahead of the step, by a background thread (0: on the loop's
    # thread, for debugging).
    cfg.data.prefetch_to_device = 2
    # Hold each host's share of the training split in its devices' memory and gather each batch
    # there from indices the host sends (a copy per device: the share must fit each device's
    # memory). Same batches as streaming, on any number of hosts.
    cfg.data.on_device = False
    # Hold this host's share of the training split in host memory and gather each batch there
    # (numpy, on the prefetch thread) instead of reading records: for corpora that fit in RAM,
    # on any number of hosts. Same batches as streaming.
    cfg.data.in_host_memory = False
    # With in_host_memory or on_device: a folder where each host's split is written once as
    # flat files and memory-mapped from then on (the split may then exceed RAM: the page cache
    # holds what it can); "" loads the split into RAM at every start.
    cfg.data.arrays_dir = ""
    # "grpc://host:port" of a tf.data service dispatcher: its workers read and parse the records
    # (`v2f data-service`); "" reads on this host.
    cfg.data.service_address = ""

    cfg.model = ml_collections.ConfigDict()
    cfg.model.arch = "wen2019"  # or "paper"
    cfg.model.embed_dim = 64
    cfg.model.voice_channels = (256, 384, 576, 864)
    cfg.model.gen_channels = (1024, 512, 256, 128, 64)
    cfg.model.trunk_channels = (32, 64, 128, 256, 512)
    # How G upsamples x2 (v2f_jax/models.py: Generator): "" the architecture's own (wen2019: the
    # reference's 4x4 stride-2 transposed convs, which draw a checkerboard; paper: nearest x2 +
    # 3x3 conv), or "deconv", "nearest", "bilinear" (bilinear x2 + 3x3 conv),
    # "conv_bilinear" (3x3 conv, then bilinear x2), "subpixel" (3x3 conv to 4x the channels +
    # depth-to-space, ICNR-initialised). Only "deconv" without blur converts to the reference's
    # PyTorch generator.
    cfg.model.upsample = ""
    # A binomial [1, 2, 1] blur after each x2 layer of G (zero response at period 2).
    cfg.model.upsample_blur = False
    # G's last layer, 64x64 features to RGB: the reference's 1x1 conv, or a k x k conv (odd k)
    # that can sharpen what a smoothing upsampler ("bilinear") drew.
    cfg.model.gen_out_kernel = 1
    # 0: G draws the whole face (the reference). N (divides 64): the face's means over N x N
    # cells come from a linear map of the voice embedding, fitted to the training speakers' mean
    # faces before the GAN trains (v2f_jax/training/coarse_face.py), and G draws the detail.
    cfg.model.coarse_cell = 0
    cfg.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16"; parameters stay float32
    # Conv implementation, all exactly equivalent (v2f_jax/ops/conv.py): "auto" picks per backend,
    # "xla" forces plain XLA convs; or "subpixel", "matmul", "winograd".
    cfg.model.impl = "auto"
    # Matmul/conv precision of the step: "default" is the backend's (TF32-like on GPU, one bf16
    # pass on TPU: not float32 there); "highest" is true float32 everywhere; "high" in between.
    cfg.model.matmul_precision = "default"
    cfg.model.num_ids = 0  # identities of the training split; set from the records' manifest

    cfg.optim = ml_collections.ConfigDict()
    cfg.optim.lr = 2e-4
    cfg.optim.b1 = 0.5
    cfg.optim.b2 = 0.999
    # > 0: cosine decay of the learning rate to 0 over this many updates; 0: constant (the
    # reference).
    cfg.optim.decay_steps = 0
    # > 0: the learning rate rises linearly from 0 over this many updates first (for global
    # batches far above the reference's 128, README "Batch as devices grow"); 0: the reference.
    cfg.optim.warmup_steps = 0

    cfg.train = ml_collections.ConfigDict()
    cfg.train.task = "gan"  # or "embedder" (speaker-classification pretraining of E)
    cfg.train.batch_size = 128  # global, over all devices and hosts
    cfg.train.steps = 30_000  # the reference's gan_train.py
    cfg.train.embed_noise = 0.05
    # Weight of C's identity loss on G's faces beside the adversarial loss (the reference: 1).
    cfg.train.identity_weight = 1.0
    # > 0: keep an exponential moving average of G's weights (StyleGAN's "G_ema"), decay per
    # step; evaluation, export and `v2f generate` use it. 0: G as trained (the reference).
    cfg.train.ema_decay = 0.0
    # > 0: G also draws from blends of two voices, weights ~ Beta(this, this), and C's loss on
    # those faces (and the mean-face term, when on) asks for the same blend of the two speakers
    # (v2f_jax/training/voice_mixup.py). 0: the reference.
    cfg.train.voice_mixup = 0.0
    cfg.train.train_embedder = False  # the reference keeps E frozen
    # > 0: the network the run trains also regresses its speaker's mean training face,
    # block-averaged over face_target_pool pixels a side (v2f_jax/training/face_targets.py): E's
    # pretraining (task "embedder") predicts it from the embedding, G draws it (task "gan"),
    # this weight x the squared error. 0: neither (the reference).
    cfg.train.face_target_weight = 0.0
    cfg.train.face_target_pool = 16
    # > 0: R1 (Mescheder et al. 2018): the critics' loss also has this weight / 2 x the squared
    # gradient norm of D's logit with respect to real faces, so D stays smooth around the photos
    # and G is not pushed towards pixel patterns only D reacts to. 0: none (the reference).
    cfg.train.r1_weight = 0.0
    # R1 on every N-th step only, at N x the weight (lazy regularisation, Karras et al. 2020):
    # most of its double backward's cost saved.
    cfg.train.r1_every = 1
    # Where a GAN's E starts: the workdir of an `embedder` run, or an exported model; a GAN with
    # a frozen E needs one ("random": an untrained E, on purpose).
    cfg.train.embedder_init = ""
    cfg.train.parallel = "jit"  # or "pmap"
    cfg.train.steps_per_call = 1  # K > 1: K steps per dispatch (lax.scan); for ms-scale steps
    cfg.train.profile_steps = ()  # (a, b): a jax.profiler trace of steps a..b in WORKDIR/profile
    # XLA's persistent compilation cache: "auto" ($JAX_COMPILATION_CACHE_DIR where set, else
    # WORKDIR/xla_cache), "workdir" (WORKDIR/xla_cache), a shared folder, or "" (off).
    cfg.train.compilation_cache = "auto"
    cfg.train.log_every = 200
    cfg.train.sample_every = 2_000
    cfg.train.on_nonfinite = "stop"  # or "skip" (at most max_nonfinite_skips steps)
    cfg.train.max_nonfinite_skips = 10

    cfg.checkpoint = ml_collections.ConfigDict()
    cfg.checkpoint.every = 2_000
    cfg.checkpoint.keep = 3

    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.face_embedder_steps = 2_000
    cfg.eval.gallery_size = 0  # identities per retrieval gallery; 0: all test identities
    return cfg
