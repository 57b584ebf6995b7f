"""``multimodal serve``: a search page and JSON endpoint over one index, on 127.0.0.1 by default."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from multimodal.cli.command_options import (
    DEVICE_HELP,
    PRECISION_HELP,
    PROGRAM,
    byte_size,
    checked,
    checkpoint_dir,
    resolve_device,
)

port_number = checked(int, lambda value: 0 <= value <= 65535, "a port number from 0 to 65535")


def add_command(commands) -> None:
    serve = commands.add_parser(
        "serve", help="a web page and JSON endpoint that search an index (needs the serve extra)",
        description=(
            "Serve a search page over an index: a text box, an image or audio upload, a grid of hits with "
            "thumbnails, audio players and scores; GET /api/search?text=...&k=10 and POST "
            "/api/search?modality=image (the file as the body) answer JSON. Only rows of the index are ever "
            "served, by id. Needs: pip install 'multimodal-contrastive[serve]'."
        ),
    )
    serve.add_argument("--index", required=True, metavar="DIR", help="an index folder written by multimodal index")
    serve.add_argument("--checkpoint", type=checkpoint_dir, metavar="DIR",
                       help="the checkpoint the index was built from, when it has moved (default: the path it records)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload", type=byte_size, default="10M", metavar="SIZE",
                       help="largest query file accepted, e.g. 10M (default 10M)")
    serve.add_argument("--device", default="auto", help=DEVICE_HELP)
    serve.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help=PRECISION_HELP)
    serve.set_defaults(run=run, command_parser=serve)


def run(args, parser: argparse.ArgumentParser) -> int:
    """Serves until Ctrl-C, which ends the command with exit status 0 and one line on stderr.

    Ctrl-C is how this command is meant to stop ("Ctrl-C stops"), so it is a normal end,
    not a failure: status 0, as for any command that did what it was asked. That holds
    while the model loads too.
    """
    try:
        _serve(args)
    except KeyboardInterrupt:
        # uvicorn shuts down on SIGINT, then raises it again; where SIGINT is ignored
        # (a job started in the background by a script) the server just returns.
        pass
    print(f"{PROGRAM} serve: stopped", file=sys.stderr, flush=True)
    return 0


def _serve(args) -> None:
    from multimodal.apps.search import load_index_model, open_index
    from multimodal.apps.search_server import SearchService, create_app, run_server

    if isinstance(args.max_upload, str):  # the default, given as text
        args.max_upload = byte_size(args.max_upload)
    index = open_index(args.index)
    model = load_index_model(index, args.checkpoint, device=resolve_device(args.device), precision=args.precision)
    app = create_app(SearchService(index, model, max_upload_bytes=args.max_upload))
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: listening on {args.host}: anyone who can reach this address can search the index and "
              "read its media", file=sys.stderr)
    print(f"serving {index.count} {index.modality} rows of {args.index} on http://{args.host}:{args.port}/ "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    run_server(app, host=args.host, port=args.port)
