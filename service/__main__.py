"""`python -m service`: serve with uvicorn, host/port and everything else from LANDMARKS_*."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .logs import configure_logging
from .settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"invalid LANDMARKS_* setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        log_config=None, access_log=False,
        # SIGTERM: stop accepting, let in-flight requests finish for up to this long.
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally when start-up failed (e.g. model missing): exit non-zero then.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
