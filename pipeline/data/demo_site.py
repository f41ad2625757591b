"""The demo gallery served over HTTP on loopback, as a site to scrape (scrape.serve_gallery)."""

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """`folder` served over HTTP on loopback for the duration of the block; yields its base URL."""
    if not folder.is_dir():
        raise PipelineError(f"scrape.serve_gallery: {folder} does not exist (run `make data` first)")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
