"""How both HTTP services start (``finsent.http.serve``): a taken port is finsent's Conflict naming the setting
to change, never uvicorn's own text line and exit code 3 (finsent's "a gate refused"); uvicorn's log lines go
through finsent's handlers. Real sockets on 127.0.0.1, a port this test holds taken."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import environ_without_finsent, make_settings
from fastapi import FastAPI

from finsent.errors import Conflict
from finsent.net import free_port, port_open
from finsent.web.api import run


def test_a_taken_port_is_a_conflict_naming_the_setting(taken_port):
    from finsent.http import serve

    with pytest.raises(Conflict) as err:
        serve(FastAPI(), "127.0.0.1", taken_port, "web.port (FINSENT_WEB__PORT)")
    assert (
        str(err.value) == f"127.0.0.1:{taken_port} is already in use; set web.port (FINSENT_WEB__PORT) to a free port"
    )
    assert err.value.exit_code == 1


def test_the_apis_run_refuses_a_taken_port_with_a_conflict_not_uvicorns_exit_3(tmp_path, taken_port):
    """``finsent serve`` ends in ``run``: uvicorn answered a taken port with SystemExit(3)."""
    settings = make_settings(tmp_path, web={"port": taken_port})
    with pytest.raises(Conflict, match="FINSENT_WEB__PORT"):
        run(FastAPI(), settings)


def test_a_port_in_time_wait_is_not_taken_for_busy():
    """Bound as the server binds (SO_REUSEADDR): a port a previous run closed a connection on is free to use."""
    from finsent.http import check_bindable

    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the connection stays in TIME_WAIT
        client.close()
    check_bindable("127.0.0.1", port, "web.port (FINSENT_WEB__PORT)")


def test_uvicorns_log_lines_are_finsents_json_lines(tmp_path):
    """``log_config=None``: uvicorn's loggers go to finsent's handler (JSON when stderr is not a terminal), not the
    text handlers it installs itself. A request that is not HTTP makes uvicorn log a warning."""
    port = free_port()
    env = {**environ_without_finsent(), "FINSENT_WEB__PORT": str(port), "FINSENT_PATHS__STATE_DIR": str(tmp_path)}
    code = (
        "from fastapi import FastAPI; from finsent import logs; from finsent.settings import load; "
        "from finsent.web.api import run; logs.setup(); run(FastAPI(), load())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            s.recv(1024)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "uvicorn logged nothing"
    docs = [json.loads(line) for line in lines]  # every line JSON: a text line fails here
    assert any(d["logger"].startswith("uvicorn") and d["level"] == "warning" for d in docs), docs
