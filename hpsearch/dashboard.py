"""`hpsearch dashboard`: optuna-dashboard on the project's storage and artifact store.

The storage is opened as the workers open it (hpsearch.storage: WAL, a 60 s lock timeout), so a
dashboard polling a live SQLite study reads beside the writers instead of locking them out. The
server is the standard library's threaded WSGI server, as optuna-dashboard's own command uses,
bound to 127.0.0.1 unless told otherwise: the dashboard has no log-in and can rename and delete
studies, so it is not put on a network by default.
"""

from __future__ import annotations

from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from rich.console import Console

from hpsearch.artifact_store import artifact_dir, open_store
from hpsearch.errors import ConfigError, mask_url
from hpsearch.storage import open_storage

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request in flight does not hold up Ctrl-C


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """The page polls the API every few seconds: one stderr line per request is noise."""


def build_server(
    storage_url: str, host: str = "127.0.0.1", port: int = 8080, artifacts: str | Path | None = None
) -> tuple[WSGIServer, Path | None]:
    """A ready, not yet serving, dashboard server (port 0: any free port) and its artifact folder."""
    import optuna_dashboard

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    storage = open_storage(storage_url, create=False)
    folder = artifact_dir(storage_url, artifacts)
    store = open_store(folder) if folder is not None else None
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    server = make_server(host, port, app, server_class=ThreadedWSGIServer, handler_class=QuietHandler)
    return server, folder


def url_of(server: WSGIServer) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/dashboard"


def serve(storage_url: str, host: str, port: int, artifacts: str | Path | None, console: Console) -> int:
    """Serve until Ctrl-C; says the URL to open first."""
    server, folder = build_server(storage_url, host, port, artifacts)
    console.print(f"optuna-dashboard on {mask_url(storage_url)}, artifacts in {folder or '(none)'}")
    if host not in LOCAL_HOSTS:
        console.print(
            f"[yellow]warning[/]: listening on {host}: anyone who can reach this address can read, "
            "rename and delete studies (the dashboard has no log-in)"
        )
    console.print(f"open {url_of(server)}   (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("dashboard stopped")
    finally:
        server.server_close()
    return 0
