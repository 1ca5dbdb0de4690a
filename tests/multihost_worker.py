"""The one-process reference of tests/test_multihost.py: one process that sees, at every step,
the global batch two hosts would see (host 0's rows, then host 1's), on this process's devices.

    python tests/multihost_worker.py CONFIG RECORDS WORKDIR HOSTS [--config.key=value ...]
"""

import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv):
    config_path, records, workdir, hosts, *overrides = argv
    hosts = int(hosts)
    from v2f_jax import config_lib, train
    from v2f_jax.input_pipeline import manifest, reader

    config = config_lib.load_config(REPO / config_path, overrides)
    records = manifest.Records.open(records)

    def make_batches(start_batch):
        streams = [
            reader.make_train_iterator(
                records,
                batch_size=config.train.batch_size,
                crop_lengths=tuple(config.data.crop_lengths),
                seed=config.seed,
                process_index=i,
                process_count=hosts,
                face_flip=config.data.face_flip,
                shuffle_buffer=config.data.shuffle_buffer,
                start_batch=start_batch,
            )
            for i in range(hosts)
        ]
        for parts in zip(*streams):
            yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    train.train(config, os.path.abspath(workdir), records, make_batches=make_batches)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
