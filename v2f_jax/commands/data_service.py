"""Run tf.data service servers on input machines, so that trainer hosts hand reading and parsing
to them (`--config.data.service_address=grpc://DISPATCHER_HOST:PORT`): one dispatcher, and one
worker per address of its --workers list. The batches are the same, in the same order, as
without the service; worker w of W computes batches w, w + W, ... of every trainer host.

Workers read the records themselves: each must see the records directory at the same path as
the trainers, and run the same v2f and TensorFlow versions. Trainers must reach the dispatcher
and every worker at the addresses given here. A server runs until killed (Ctrl-C or SIGTERM); a
restarted worker fails the running jobs (training stops with an error, then resumes exactly).

Example, input machines in1 and in2: `v2f data-service dispatcher --port 5000 --workers
in1:5001,in2:5001` and `v2f data-service worker --dispatcher in1:5000 --port 5001 --host in1` on
in1, `v2f data-service worker --dispatcher in1:5000 --port 5001 --host in2` on in2.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1..65535, got {value}")
    return value


def _address(text: str, any_port: bool = False) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not (port.isdigit() or (any_port and port == "%port%")):
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return f"{host}:{port}"


def _addresses(text: str) -> list[str]:
    addresses = [_address(a, any_port=True) for a in text.split(",") if a.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError("no worker address")
    return addresses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    dispatcher = roles.add_parser(
        "dispatcher",
        help="the one dispatcher trainers connect to (config.data.service_address)",
        description="Start the tf.data service dispatcher and block. Trainers connect to "
        "grpc://THIS_HOST:PORT (--config.data.service_address).",
    )
    dispatcher.add_argument("--port", type=_port, default=5000, help="port (default 5000)")
    dispatcher.add_argument(
        "--workers",
        type=_addresses,
        required=True,
        metavar="HOST:PORT,...",
        help="every worker's HOST:PORT, comma-separated, spelled as each worker's --host and "
        "--port; their order numbers the shards. Batches are split by this fixed list (static "
        "sharding): a listed worker that is not running stalls training with an error",
    )
    worker = roles.add_parser(
        "worker",
        help="a worker that reads and parses records for every trainer host",
        description="Start a tf.data service worker and block. It reads the records itself: "
        "the records directory must be at the same path here as on the trainers.",
    )
    worker.add_argument(
        "--dispatcher",
        type=_address,
        required=True,
        metavar="HOST:PORT",
        help="the dispatcher's HOST:PORT",
    )
    worker.add_argument("--port", type=_port, default=5001, help="port (default 5001)")
    worker.add_argument(
        "--host",
        default=None,
        help="this worker's host name as the dispatcher's --workers list spells it and as "
        "trainers reach it (default: this machine's host name)",
    )


def run(args: argparse.Namespace) -> int:
    import tensorflow as tf

    service = tf.data.experimental.service
    try:
        if args.role == "dispatcher":
            server = service.DispatchServer(
                service.DispatcherConfig(port=args.port, worker_addresses=args.workers)
            )
            print(
                f"v2f data-service: dispatcher on port {args.port}, workers "
                f"{','.join(args.workers)}; trainers: "
                f"--config.data.service_address=grpc://{socket.gethostname()}:{args.port}",
                flush=True,
            )
        else:
            host = args.host or socket.gethostname()
            server = service.WorkerServer(
                service.WorkerConfig(
                    dispatcher_address=args.dispatcher,
                    worker_address=f"{host}:{args.port}",
                    port=args.port,
                    data_transfer_address=f"{host}:%dts_port%",
                )
            )
            print(
                f"v2f data-service: worker {host}:{args.port} of dispatcher {args.dispatcher} "
                f"(its --workers list must name {host}:{args.port})",
                flush=True,
            )
    except (RuntimeError, tf.errors.OpError) as err:  # a port in use: "Could not start gRPC server"
        print(
            f"v2f data-service {args.role}: error: cannot serve on port {args.port}: {err}",
            file=sys.stderr,
        )
        return 2
    # join() blocks inside TensorFlow, where Python's Ctrl-C handler never runs: let SIGINT
    # end the process as SIGTERM does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    server.join()
    return 0
