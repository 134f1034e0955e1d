import subprocess
import sys

import pytest

from finsent.errors import SettingsError
from finsent.settings import load


def test_defaults_bind_to_loopback_and_validate():
    s = load()
    assert s.broker.host == s.services.host == "127.0.0.1"
    assert s.kafka.bootstrap.startswith("127.0.0.1:")
    assert {t.name for t in s.topics.all()} == {
        "finsent.news.raw",
        "finsent.news.scored",
        "finsent.alerts",
        "finsent.feedback",
        "finsent.dlq",
        "finsent.windows",
        "finsent.stream.checkpoints",
    }
    assert s.surge.window_s in s.windows.rolling_seconds


def test_the_surge_width_must_be_a_rolling_window():
    with pytest.raises(SettingsError, match=r"surge.window_s=60 must be one of windows.rolling_seconds"):
        load(surge={"window_s": 60})


def test_a_call_alone_gets_all_cores_only_where_calls_otherwise_go_side_by_side_on_onnx():
    from finsent.model.placement import alone_choice

    model = load().model  # threads unset, spin_from_texts 256
    alone = alone_choice(model, 2, "onnx-int8", 128)
    assert alone is not None and alone.threads == 0  # all cores
    assert alone.spin_from_texts == 0  # its calls hold < 128 texts: no spinning session for large ones
    # the backend the side-by-side calls serve, not the setting (auto could resolve elsewhere a second time)
    assert model.backend == "auto" and alone.backend == "onnx-int8"
    assert alone_choice(model, 2, "onnx", 512) == model.model_copy(update={"backend": "onnx"})  # 256-511 still spin
    assert alone_choice(model, 1, "onnx-int8", 128) is None  # one call at a time anyway
    assert alone_choice(model, 2, "onnx-int8", 0) is None  # always side by side
    assert alone_choice(model, 2, "torch", 128) is None  # torch spreads every call over all cores
    assert alone_choice(model.model_copy(update={"threads": 1}), 2, "onnx", 128) is None  # threads pinned


def test_a_call_that_has_the_machine_spreads_its_forwards_over_one_session_per_core(monkeypatch):
    from finsent.model import placement

    monkeypatch.setattr(placement, "cpu_cores", lambda: 4)
    model = load().model  # threads and sessions unset
    assert placement.sessions_for(model) == 4  # one call at a time (the worker's default)
    assert placement.sessions_for(placement.side_by_side(model)) == 1  # calls side by side (API, backtest)
    assert placement.sessions_for(model.model_copy(update={"threads": 2})) == 1  # threads pinned
    assert placement.sessions_for(model.model_copy(update={"sessions": 3, "threads": 2})) == 3  # asked for
    assert placement.sessions_for(placement.side_by_side(model.model_copy(update={"sessions": 3}))) == 1
    monkeypatch.setattr(placement, "cpu_cores", lambda: 64)
    assert placement.sessions_for(model) == placement.AUTO_SESSIONS_MAX  # a copy of the graph each: capped


def test_the_api_makes_one_spread_call_at_a_time_unless_threads_are_pinned(monkeypatch):
    """``web.classify_concurrency`` auto: one call (its forwards spread over the cores); pinned threads: calls side
    by side as before. (Stand-in classifiers: ``calls_at_once`` reads only the backend's name, threads, spread.)"""
    from types import SimpleNamespace

    from finsent.model import placement
    from finsent.web.state import api_model

    monkeypatch.setattr(placement, "cpu_cores", lambda: 2)
    settings = load()
    assert placement.sessions_for(api_model(settings)) == 2
    spread = SimpleNamespace(backend=SimpleNamespace(name="onnx-int8", threads=1, spread=2))
    assert placement.calls_at_once(spread) == 1 and placement.calls_at_once(spread, 3) == 3
    pinned = load(model={"threads": 1})
    assert placement.sessions_for(api_model(pinned)) == 1
    assert placement.calls_at_once(SimpleNamespace(backend=SimpleNamespace(name="onnx-int8", threads=1))) == 2


def test_environment_overrides_nested_fields(monkeypatch):
    monkeypatch.setenv("FINSENT_TOPICS__RAW__PARTITIONS", "12")
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    s = load()
    assert s.topics.raw.partitions == 12
    assert s.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"


def test_toml_file_then_environment_wins(tmp_path, monkeypatch):
    cfg = tmp_path / "finsent.toml"
    cfg.write_text('[topics.raw]\nname = "desk.raw"\npartitions = 8\n[surge]\nz_threshold = 4.0\n')
    s = load(cfg)
    assert (s.topics.raw.name, s.topics.raw.partitions, s.surge.z_threshold) == ("desk.raw", 8, 4.0)
    monkeypatch.setenv("FINSENT_TOPICS__RAW__PARTITIONS", "2")
    assert load(cfg).topics.raw.partitions == 2
    monkeypatch.setenv("FINSENT_CONFIG", str(cfg))
    assert load().topics.raw.name == "desk.raw"


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("FINSENT_BROKER__PORT", "99999", "broker.port (FINSENT_BROKER__PORT)"),
        ("FINSENT_TOPICS__SCORED__PARTITIONS", "0", "topics.scored.partitions (FINSENT_TOPICS__SCORED__PARTITIONS)"),
        ("FINSENT_KAFKA__BOOTSTRAP", "no-port", "kafka.bootstrap (FINSENT_KAFKA__BOOTSTRAP)"),
        ("FINSENT_WINDOWS__ROLLING_SECONDS", "[90]", "windows.rolling_seconds"),
        ("FINSENT_SURGE__Z_RESOLVE", "5", "surge.z_resolve"),
        ("FINSENT_MODEL__BACKEND", "tpu", "model.backend"),
        ("FINSENT_NO_SUCH_THING", "1", "FINSENT_NO_SUCH_THING: no such setting"),
        ("FINSENT_BROKER__PROT", "1", "FINSENT_BROKER__PROT: no such setting"),
        ("finsent_brokr__port", "1", "finsent_brokr__port: no such setting"),  # read case-insensitively
        (
            "FINSENT_WINDOWS__ROLLING_SECONDS",
            "[300",
            "FINSENT_WINDOWS__ROLLING_SECONDS: not valid JSON",
        ),  # no traceback
        ("FINSENT_RECEIVER__ALLOWED_HOSTS", "receiver", "FINSENT_RECEIVER__ALLOWED_HOSTS: not valid JSON"),
        ("finsent_log_level", "DEBUG", "finsent_log_level: no such setting"),  # read only as FINSENT_LOG_LEVEL
        (
            "FINSENT_KAFKA__SECURITY_PROTOCOL",
            "SASL_SSL",
            "FINSENT_KAFKA__SASL_USERNAME and FINSENT_KAFKA__SASL_PASSWORD",
        ),
    ],
)
def test_invalid_settings_name_the_field(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load()
    assert named in str(err.value)


def test_duplicate_topic_names_rejected(monkeypatch):
    monkeypatch.setenv("FINSENT_TOPICS__DLQ__NAME", "finsent.news.raw")
    with pytest.raises(SettingsError, match="distinct"):
        load()


@pytest.mark.parametrize(
    ("content", "named"), [(b"x = [", "is not valid TOML"), (b"\xff\xfe[broker]", "is not valid TOML")]
)
def test_a_config_file_that_is_not_toml_is_one_settings_error(tmp_path, content, named):
    cfg = tmp_path / "f.toml"
    cfg.write_bytes(content)
    with pytest.raises(SettingsError, match=named):
        load(cfg)


def test_sasl_with_its_credentials_is_accepted(monkeypatch):
    monkeypatch.setenv("FINSENT_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FINSENT_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("FINSENT_KAFKA__SASL_PASSWORD", "s3cret-value-long-enough")
    assert load().kafka.sasl_username == "svc"


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load(tmp_path / "absent.toml")


def test_unknown_key_in_toml_is_an_error(tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text("[broker]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"broker\.prot"):
        load(cfg)


def test_cli_fails_at_start_naming_the_field(tmp_path):
    env = {"FINSENT_BROKER__PORT": "-1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "broker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "broker.port (FINSENT_BROKER__PORT)" in proc.stderr
