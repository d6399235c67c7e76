"""`cvm serve`: run the localisation service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from model.checkpoint import CheckpointError

HELP = "Run the localisation service (HTTP API, map page at /, API docs at /docs)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default CVM_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default CVM_PORT or 8000)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.core.config import ServiceSettings
    from service.core.state import load_localizer
    from service.main import create_app
    from storage.settings import describe_invalid_settings

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = ServiceSettings(**overrides)
        # Loaded before uvicorn starts so that a missing or broken checkpoint is one clear line.
        localizer = load_localizer(settings)
    except ValidationError as exc:
        print(f"cvm serve: invalid setting: {describe_invalid_settings(exc)}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"cvm serve: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings)
    app.state.cvm.localizer = localizer
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    return 0
