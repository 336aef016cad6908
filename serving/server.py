"""`commerce-mtl serve`: a model server speaking TF Serving's gRPC and REST APIs over SavedModel dirs.

    commerce-mtl serve --model-name commerce --model-base-path workdir/serving_model/commerce
    commerce-mtl serve --model-config-file serving/deploy/models.config --enable-batching \
        --batching-parameters-file serving/deploy/batching.config
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc  # noqa: E402

from serving.batching import Batching  # noqa: E402
from serving.batching_config import BatchingParameters, load_batching_parameters  # noqa: E402
from serving.grpc_service import Runtime, add_services  # noqa: E402
from serving.manager import ModelManager  # noqa: E402
from serving.model_config import ModelEntry, load_model_config  # noqa: E402
from serving.rest import make_rest_server, serve_in_thread  # noqa: E402

log = logging.getLogger("commerce_mtl.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="commerce-mtl serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--rest-api-port", type=int, default=8501, help="REST port; 0 turns REST off")
    p.add_argument("--model-name", help="name of the single served model (with --model-base-path)")
    p.add_argument("--model-base-path", help="folder holding numbered version dirs of the model")
    p.add_argument("--model-config-file", help="TF Serving model_config_list text proto (several models)")
    p.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0,
                   help="how often to look for new versions; 0 looks once at start")
    p.add_argument("--enable-batching", action="store_true")
    p.add_argument("--batching-parameters-file", help="TF Serving batching parameters text proto")
    p.add_argument("--enable-model-warmup", type=lambda v: v.lower() != "false", default=True,
                   help="replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest gRPC request/response; larger requests get RESOURCE_EXHAUSTED")
    p.add_argument("--grpc-threads", type=int, default=16)
    return p


def model_entries(args) -> list[ModelEntry]:
    if args.model_config_file:
        if args.model_name or args.model_base_path:
            raise ValueError("use either --model-config-file or --model-name/--model-base-path, not both")
        return load_model_config(args.model_config_file)
    if not (args.model_name and args.model_base_path):
        raise ValueError("give --model-name and --model-base-path, or --model-config-file")
    return [ModelEntry(args.model_name, str(Path(args.model_base_path).resolve()), ("latest", 1))]


def batching_parameters(args) -> BatchingParameters | None:
    if not args.enable_batching:
        return None
    if args.batching_parameters_file:
        return load_batching_parameters(args.batching_parameters_file)
    return BatchingParameters()


class ModelServer:
    """The running server: manager, gRPC and REST endpoints. `stop()` shuts all down."""

    def __init__(self, args):
        params = batching_parameters(args)
        self.batching = Batching(params) if params else None
        self.manager = ModelManager(model_entries(args), args.file_system_poll_wait_seconds,
                                    warmup=args.enable_model_warmup, on_swap=self._on_swap)
        self.runtime = Runtime(self.manager, self.batching)
        options = [("grpc.max_receive_message_length", args.max_message_bytes),
                   ("grpc.max_send_message_length", args.max_message_bytes)]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=args.grpc_threads), options=options)
        add_services(self.grpc, self.runtime)
        self.grpc_port = self.grpc.add_insecure_port(f"{args.host}:{args.port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {args.host}:{args.port}")
        self.rest = make_rest_server(args.host, args.rest_api_port, self.runtime) if args.rest_api_port else None

    def _on_swap(self) -> None:
        if self.batching is not None:
            live = {id(s) for name in self.manager.model_names() for s in self.manager.servables(name)}
            self.batching.drop_unused(live)

    def start(self) -> None:
        self.manager.start()
        self.grpc.start()
        if self.rest:
            serve_in_thread(self.rest)

    def stop(self) -> None:
        self.grpc.stop(grace=2)
        if self.rest:
            self.rest.shutdown()
        self.manager.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        server = ModelServer(args)
    except (ValueError, OSError) as err:
        print(f"commerce-mtl serve: error: {err}", file=sys.stderr)
        return 2
    server.start()
    rest = f", REST on {args.host}:{server.rest.server_address[1]}" if server.rest else ""
    print(f"serving {', '.join(server.manager.model_names())}: gRPC on {args.host}:{server.grpc_port}{rest}",
          flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
