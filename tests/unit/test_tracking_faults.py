"""The MLflow import records `pending` only when the server cannot be reached; any other failure (a server that
answers with errors, an unreadable step record) fails with one line and writes no status."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from pipsteps.io import PipError
from pipsteps.tracking import run, unreachable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    (tmp_path / "results/base").mkdir(parents=True)
    (tmp_path / "results/base/model.json").write_text(json.dumps({"config": {"source": "tiny"}, "params": 10}))
    return tmp_path / "results"


@pytest.fixture
def failing_server():
    """A reachable HTTP server that is not a working MLflow server: every request gets a 404 or 500."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            code = 404 if "get-by-name" in self.path else 500
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"not an MLflow server")

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_server_is_pending(results):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    status = run(results, uri, "exp")
    assert status["status"] == "pending" and status["tracking_uri"] == uri
    assert "Max retries exceeded" in status["error"] or "Connection" in status["error"]


def test_server_that_answers_with_errors_fails(results, failing_server):
    with pytest.raises(PipError, match=rf"^MLflow import into {failing_server} failed: MlflowException: "):
        run(results, failing_server, "exp")
    with pytest.raises(PipError, match="failed"):  # sync (strict) fails as well
        run(results, failing_server, "exp", strict=True)


def test_cli_fails_with_one_line_and_writes_no_status(results, failing_server):
    proc = subprocess.run([sys.executable, "-m", "pipsteps.tracking", "import", "--results", str(results),
                           "--tracking-uri", failing_server, "--experiment", "exp"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"ERROR: MLflow import into {failing_server} failed")
    assert not (results / "mlflow/tracking.json").exists()


def test_truncated_record_fails_before_contacting_the_server(results):
    (results / "base/grads_clean.json").write_text('{"config": {"round": 1')  # a step killed mid-write by hand
    uri = f"http://127.0.0.1:{free_port()}"  # unreachable: the record error must not be hidden as `pending`
    with pytest.raises(PipError, match=r"^step record .*base/grads_clean\.json is not valid JSON"):
        run(results, uri, "exp")


def test_unreachable_classification():
    def chained(outer: Exception, inner: BaseException) -> Exception:
        try:
            try:
                raise inner
            except BaseException:
                raise outer  # implicit chaining (__context__), as mlflow's REST client does
        except Exception as e:
            return e

    assert unreachable(chained(RuntimeError("API request failed"), ConnectionRefusedError(111, "refused")))
    assert unreachable(chained(RuntimeError("x"), requests.exceptions.ConnectTimeout("timed out")))
    assert unreachable(chained(RuntimeError("x"), socket.gaierror(-2, "Name or service not known")))
    assert not unreachable(chained(RuntimeError("x"), requests.exceptions.SSLError(ssl.SSLError("bad cert"))))
    assert not unreachable(chained(RuntimeError("x"), requests.exceptions.RetryError("too many 500 responses")))
    assert not unreachable(ValueError("bad experiment name"))
