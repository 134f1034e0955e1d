"""The one-machine stack's set-up: the demo's stages load the settings file the demo was given, a state folder
that cannot be one is one line naming the setting, a child's start error quotes only its own run's log, and
``broker.port = 0`` starts the broker on a free port. Real processes (Python children, the Tansu broker)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import make_settings

from finsent.errors import ConfigError, ProcessStartError
from finsent.local import demo, procs
from finsent.local.broker import start_broker
from finsent.local.procs import Child, Supervisor
from finsent.net import port_open

STAGES = {"feeds", "receiver", "worker", "api", "ingest"}


class _NothingStarted(Supervisor):
    """Records the children the demo would start, and starts none."""

    def start_together(self, *starts) -> None:
        self.children += [child for child, _, _ in starts]

    def start(self, child, ready, timeout):
        self.children.append(child)
        return child


def _demo_children(monkeypatch, settings, config: Path | None) -> dict[str, Child]:
    """The demo's run up to the point it waits for a signal, without starting anything: its children by name."""
    seen: dict[str, Child] = {}

    def stand_in(name: str):
        return Child(name, ["true"], settings.paths.state_dir / "logs" / f"{name}.log"), f"http://127.0.0.1/{name}"

    class Report:
        created: list[str] = []

    def wait_for_signal(supervisor, announce):
        seen.update({c.name: c for c in supervisor.children})
        return 0

    monkeypatch.setattr(demo, "Supervisor", _NothingStarted)
    monkeypatch.setattr(demo, "start_broker", lambda s, logs: (stand_in("broker")[0], Report()))
    monkeypatch.setattr(demo, "alertmanager_child", lambda s, state: stand_in("alertmanager"))
    monkeypatch.setattr(demo, "prometheus_child", lambda s, state: stand_in("prometheus"))
    monkeypatch.setattr(demo, "alertmanager_auth", lambda s, state: ("finsent", "pw"))
    monkeypatch.setattr(demo, "register_target", lambda *a: None)
    monkeypatch.setattr(demo, "wait_for_signal", wait_for_signal)
    assert demo.run(settings, config) == 0
    return seen


def test_every_demo_stage_loads_the_settings_file_the_demo_was_given(tmp_path, monkeypatch):
    """``finsent demo --config FILE`` applied the file to the demo itself only: the stages (each a ``finsent``
    command of its own) ran on the defaults. Each now gets the file as FINSENT_CONFIG, made absolute, and the
    file given wins over a FINSENT_CONFIG the demo inherited, as it does for the demo itself."""
    settings = make_settings(tmp_path)
    config = tmp_path / "finsent.toml"
    config.write_text("[surge]\nz_threshold = 4.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FINSENT_CONFIG", str(tmp_path / "inherited.toml"))
    children = _demo_children(monkeypatch, settings, Path("finsent.toml"))
    stages = {name: c for name, c in children.items() if "finsent.cli" in c.argv}
    assert set(stages) == STAGES
    for name, child in stages.items():
        assert child.env is not None and child.env["FINSENT_CONFIG"] == str(config), name


def test_without_a_settings_file_the_stages_inherit_the_environment_as_it_is(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    monkeypatch.setenv("FINSENT_CONFIG", str(tmp_path / "from-env.toml"))
    stages = {n: c for n, c in _demo_children(monkeypatch, settings, None).items() if "finsent.cli" in c.argv}
    assert {c.env["FINSENT_CONFIG"] for c in stages.values()} == {str(tmp_path / "from-env.toml")}


@pytest.mark.parametrize("where", ["a-file", "a-file/state"], ids=["is a file", "under a file"])
def test_a_state_dir_that_cannot_be_a_folder_is_one_config_error_before_any_child(tmp_path, where):
    """Was a NotADirectoryError (or FileExistsError) traceback from the first child's log file."""
    (tmp_path / "a-file").write_text("not a folder\n")
    settings = make_settings(tmp_path, paths={"state_dir": str(tmp_path / where)})
    for start in (lambda: procs.state_dir(settings), lambda: start_broker(settings, tmp_path / where / "logs")):
        with pytest.raises(ConfigError) as err:
            start()
        message = str(err.value)
        assert "\n" not in message and message.startswith("paths.state_dir (FINSENT_PATHS__STATE_DIR)"), message
        assert str(tmp_path / where) in message


def test_a_start_error_quotes_only_the_lines_of_this_run(tmp_path):
    """A child's log is appended to across runs; a start error quoted the file's last lines, so a child that died
    at once showed the previous run's lines as if they were its own."""
    log = tmp_path / "logs" / "flaky.log"

    def fails_saying(words: str) -> ProcessStartError:
        child = Child("flaky", [sys.executable, "-c", f"print({words!r}); raise SystemExit(3)"], log)
        with pytest.raises(ProcessStartError) as err:
            child.start(lambda: False, timeout=30)
        return err.value

    first = fails_saying("the first run's line")
    assert "the first run's line" in str(first) and "exited with 3" in str(first)
    second = fails_saying("the second run's line")
    assert "the second run's line" in str(second) and "the first run's line" not in str(second)
    text = log.read_text()
    assert "the first run's line" in text and "the second run's line" in text  # the file keeps both runs
    markers = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [(m["msg"], m["child"]) for m in markers] == [("child starting", "flaky")] * 2


def test_broker_port_0_starts_the_broker_on_a_free_port_and_says_which(tmp_path):
    """``broker.port = 0`` means "a free port" (as every port setting): the readiness probe waited on port 0 for
    the start timeout and failed. The chosen port is written back to the settings, which the demo's children and
    ``finsent broker``'s ready line read."""
    settings = make_settings(tmp_path, broker={"port": 0, "start_timeout_s": 15})
    child, report = start_broker(settings, tmp_path / "logs")
    try:
        port = settings.broker.port
        assert port != 0 and port_open(settings.broker.host, port)
        assert f"--listener-url tcp://127.0.0.1:{port}" in " ".join(child.argv)
        assert settings.topics.raw.name in report.created
    finally:
        child.stop()
