"""A local HTTP file server for download tests: 127.0.0.1 only, Range requests, connections cut on demand."""
import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Optional, Tuple


class FileServer:
    """Serves ``files`` (URL path -> bytes) from a thread; ``cut_after[path] = n`` ends the next answer for that
    path after n bytes (once), and ``requests`` records (path, Range header) of every GET."""

    def __init__(self, files: Dict[str, bytes]) -> None:
        self.files = dict(files)
        self.cut_after: Dict[str, int] = {}
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.url = ''

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split('?')[0]
                server.requests.append((path, self.headers.get('Range')))
                if path not in server.files:
                    self.send_error(404)
                    return
                body = server.files[path]
                start, status = 0, 200
                requested = self.headers.get('Range')
                if requested:
                    start = int(requested.split('=')[1].split('-')[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header('Content-Range', f'bytes */{len(body)}')
                        self.send_header('Content-Length', '0')
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header('Content-Length', str(len(body) - start))
                if status == 206:
                    self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
                self.end_headers()
                cut = server.cut_after.pop(path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        return Handler


@contextlib.contextmanager
def serve_files(files: Dict[str, bytes]) -> Iterator[FileServer]:
    """Run a ``FileServer`` on a free port of 127.0.0.1 for the duration of the block."""
    state = FileServer(files)
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), state.handler())
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    state.url = f'http://127.0.0.1:{httpd.server_address[1]}'
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
