"""Run tf.data service servers on input machines, so that trainer hosts hand reading and parsing
to them (`--config.data.service_address=grpc://DISPATCHER_HOST:PORT`): one dispatcher, and one
worker per address of its --workers list. The batches are the same, in the same order, as
without the service; worker w of W computes batches w, w + W, ... of every trainer host.

Workers read the records themselves: each must see the records directory at the same path as
the trainers, and run the same v2f and TensorFlow versions. Trainers must reach the dispatcher
and every worker at the addresses given here. A server runs until killed (Ctrl-C or SIGTERM); a
restarted worker fails the running jobs (training stops with an error, then resumes exactly).

Refused with exit 2, before serving: a --port already in use (by another dispatcher or worker
too: gRPC would otherwise share the port between them), and a worker whose dispatcher does not
answer within --wait-dispatcher seconds (default 60).

Example, input machines in1 and in2: `v2f data-service dispatcher --port 5000 --workers
in1:5001,in2:5001` and `v2f data-service worker --dispatcher in1:5000 --port 5001 --host in1` on
in1, `v2f data-service worker --dispatcher in1:5000 --port 5001 --host in2` on in2.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
import threading
import time

# The dispatcher's gRPC method that answers with its version: how a worker knows one is up.
_VERSION_METHOD = "/tensorflow.data.DispatcherService/GetVersion"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 86400), got {text}")
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
        "--wait-dispatcher",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the dispatcher to answer before giving up with exit 2 "
        "(default 60)",
    )
    worker.add_argument(
        "--host",
        default=None,
        help="this worker's host name as the dispatcher's --workers list spells it and as "
        "trainers reach it (default: this machine's host name)",
    )


def port_in_use(port: int) -> str | None:
    """Why `port` cannot be served on (it is in use), or None. gRPC binds with SO_REUSEPORT, so
    a second dispatcher or worker would share a port in use rather than fail: this plain bind is
    what notices."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        probe.bind(("", port))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return "in use (another dispatcher or worker, or another program, listens there)"
        return err.strerror or str(err)
    finally:
        probe.close()
    return None


def dispatcher_answers(address: str, timeout_s: float) -> str | None:
    """None once a tf.data service dispatcher at HOST:PORT answers; else why not (after
    `timeout_s` seconds of retrying: a dispatcher may still be starting)."""
    import grpc

    deadline = time.monotonic() + timeout_s
    why = "no answer"
    while True:
        channel = grpc.insecure_channel(address)
        call = channel.unary_unary(
            _VERSION_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            call(b"", timeout=max(0.2, min(5.0, deadline - time.monotonic())))
            return None
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "something answers there, but not a tf.data service dispatcher"
            why = (
                "nothing listens there (connection refused)"
                if code == grpc.StatusCode.UNAVAILABLE
                else "it accepts connections but does not answer"
            )
        finally:
            channel.close()
        if time.monotonic() >= deadline:
            return why
        time.sleep(0.5)


def _start_within(make, timeout_s: float):
    """`make()` in a daemon thread; its result, or None when it is still blocked after
    `timeout_s` (TensorFlow's own waits for a dispatcher are unbounded)."""
    result: list = []

    def target():
        try:
            result.append((True, make()))
        except BaseException as err:  # re-raised in the caller's thread
            result.append((False, err))

    thread = threading.Thread(target=target, name="v2f-data-service-start", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        return None
    ok, value = result[0]
    if not ok:
        raise value
    return value


def run(args: argparse.Namespace) -> int:
    def refuse(reason: str) -> int:
        print(f"v2f data-service {args.role}: error: {reason}", file=sys.stderr)
        return 2

    busy = port_in_use(args.port)
    if busy:
        return refuse(f"cannot serve on port {args.port}: {busy}; choose another --port")
    if args.role == "worker":
        why = dispatcher_answers(args.dispatcher, args.wait_dispatcher)
        if why:
            return refuse(
                f"no tf.data service dispatcher answered at {args.dispatcher} in "
                f"{args.wait_dispatcher:g} s ({why}); start it first (`v2f data-service "
                f"dispatcher --port PORT --workers HOST:PORT,...`), or check --dispatcher"
            )

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
            config = service.WorkerConfig(
                dispatcher_address=args.dispatcher,
                worker_address=f"{host}:{args.port}",
                port=args.port,
                data_transfer_address=f"{host}:%dts_port%",
            )
            server = _start_within(lambda: service.WorkerServer(config), args.wait_dispatcher)
            if server is None:
                return refuse(
                    f"the dispatcher at {args.dispatcher} did not register this worker in "
                    f"{args.wait_dispatcher:g} s; is it still running?"
                )
            print(
                f"v2f data-service: worker {host}:{args.port} of dispatcher {args.dispatcher} "
                f"(its --workers list must name {host}:{args.port})",
                flush=True,
            )
    except (RuntimeError, tf.errors.OpError) as err:  # a port in use: "Could not start gRPC server"
        return refuse(f"cannot serve on port {args.port}: {err}")
    # join() blocks inside TensorFlow, where Python's signal handlers never run: let SIGINT and
    # SIGTERM end the process at once (a server holds nothing to save).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server.join()
    return 0
