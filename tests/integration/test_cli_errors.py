"""Every ``finsent`` command's usual failures end in one line and a documented exit code, never a traceback.

Real processes (``python -m finsent.cli``), real sockets: a dead broker is a port nobody listens on, a taken
port is one this test holds open. ``--debug`` is the one way to see the traceback, and that is checked too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import environ_without_finsent

from finsent.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def finsent(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = environ_without_finsent()
    child_env = {
        **base,
        "FINSENT_PATHS__STATE_DIR": str(tmp_path / "state"),
        "FINSENT_PATHS__DATA_DIR": str(tmp_path / "no-shared-data"),  # a clone without ../shared
        "FINSENT_LOG_JSON": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", *args], env=child_env, capture_output=True, text=True, timeout=240
    )


def dead_broker() -> dict[str, str]:
    return {"FINSENT_KAFKA__BOOTSTRAP": f"127.0.0.1:{free_port()}", "FINSENT_KAFKA__CONNECT_TIMEOUT_S": "1"}


CASES = {
    # name: (argv, env, exit code, what the line must say)
    "eval without data": (["eval", "--no-mlflow"], {}, 2, "missing evaluation data directory"),
    "export without data": (["export"], {}, 2, "missing"),
    "train without data": (
        ["train", "--no-mlflow", "--limit-train", "8"],
        "run_config:train-minilm.toml",
        2,
        "missing",
    ),
    "pretrain without data": (["pretrain", "--limit", "8"], "run_config:pretrain-minilm-news.toml", 2, "missing"),
    # a run config that cannot work: one line before a model or a data set is loaded (were tracebacks)
    "train, run config missing": (["train", "--run-config", "{tmp}/nope.toml"], {}, 2, "nope.toml"),
    "train, unknown training set": (["train"], 'run_text:train_sets = ["sp500"]', 2, "unknown training sets ['sp500']"),
    "train, unlabelled set without a teacher": (
        ["train"],
        'run_text:train_sets = ["news-unlabelled"]',
        2,
        "have no labels: set self_train_from",
    ),
    "train, resumable run unnamed": (["train"], "run_text:max_steps = 5", 2, "max_steps needs a version"),
    # research data under the default's name would be served by every command as the permissive model
    "train, research data under the default name": (
        ["train"],
        'run_text:name = "finsent-minilm"\ntrain_sets = ["sp500-posneg"]\ndata_dir = "{tmp}"',
        2,
        "name it finsent-minilm-research",
    ),
    "pretrain, resumable run unnamed": (
        ["pretrain", "--max-steps", "5", "--run-config", "configs/pretrain-minilm-news.toml"],
        {},
        2,
        "--max-steps needs --version",
    ),
    "topics, broker down": (["topics"], "dead_broker", 1, "no Kafka broker"),
    "worker, broker down": (["worker"], "dead_broker", 1, "no Kafka broker"),
    "bad setting": (["topics"], {"FINSENT_BROKER__PORT": "99999"}, 2, "broker.port (FINSENT_BROKER__PORT)"),
    # a check across two groups named no setting ("(settings) (): …"): it names the one to change
    "cross-group setting": (
        ["topics"],
        {"FINSENT_SURGE__WINDOW_S": "600"},
        2,
        "surge.window_s (FINSENT_SURGE__WINDOW_S)",
    ),
    "unknown setting": (["topics"], {"FINSENT_BROKER__PROT": "1"}, 2, "FINSENT_BROKER__PROT"),
    "broker port taken": (["broker"], "taken:FINSENT_BROKER__PORT", 1, "already in use"),
    # a state dir that cannot be a folder (was a NotADirectoryError traceback from the first child's log)
    "broker, state dir is a file": (
        ["broker"],
        {"FINSENT_PATHS__STATE_DIR": "{tmp}/a-file"},
        2,
        "paths.state_dir (FINSENT_PATHS__STATE_DIR)",
    ),
    "demo, state dir is a file": (
        ["demo"],
        {"FINSENT_PATHS__STATE_DIR": "{tmp}/a-file"},
        2,
        "paths.state_dir (FINSENT_PATHS__STATE_DIR)",
    ),
    # logging options (a level logging does not know was a ValueError traceback; only "1" meant JSON)
    "unknown log level": (["--log-level", "verbose", "topics"], {}, 2, "--log-level 'verbose' is not a log level"),
    "log json not a boolean": (["topics"], {"FINSENT_LOG_JSON": "maybe"}, 2, "FINSENT_LOG_JSON 'maybe'"),
    "no model": (["serve", "--model", "/nonexistent/model"], {}, 2, "not a finsent model directory"),
    # a model chosen by name or version that is not there: an error, never the default served in its place
    "unbuilt research model": (
        ["serve"],
        {"FINSENT_MODEL__NAME": "finsent-minilm-research-unbuilt"},
        2,
        "build it: make research-model",
    ),
    "unknown model version": (["worker"], {"FINSENT_MODEL__VERSION": "19990101"}, 2, "finsent-minilm@19990101 not"),
    "no audit log": (["receiver", "verify"], {}, 1, "no audit log"),
    "no audit log to export": (["receiver", "export"], {}, 1, "no audit log"),
    # an audit log that is not a database (was a sqlite3.DatabaseError traceback for export and serving)
    "export, audit log not a database": (
        ["receiver", "export", "--from", "2024-05-01T00:00:00Z", "--to", "2024-05-02T00:00:00Z"],
        "bad_audit_log",
        1,
        "receiver/audit.sqlite cannot be opened: file is not a database",
    ),
    "verify, audit log not a database": (["receiver", "verify"], "bad_audit_log", 1, "audit.sqlite cannot be read"),
    "receiver, audit log not a database": (["receiver"], "bad_audit_log", 1, "audit.sqlite cannot be opened"),
    # a time that leaves datetime's range once moved to UTC (was an OverflowError traceback)
    "export time out of range": (["receiver", "export", "--from", "0001-01-01T00:00:00+01:00"], {}, 2, "out of range"),
    # `train --feedback` on a store it cannot fine-tune on (were tracebacks); {tmp}'s stores are written below
    "feedback store missing": (
        ["train", "--no-mlflow", "--feedback", "{tmp}/nope.jsonl"],
        "run_config:train-minilm.toml",
        2,
        "no feedback store at",
    ),
    "feedback store empty": (
        ["train", "--no-mlflow", "--feedback", "{tmp}/fb-empty.jsonl"],
        "run_config:train-minilm.toml",
        2,
        "holds no valid feedback: no corrections",
    ),
    "feedback store all bad": (
        ["train", "--no-mlflow", "--feedback", "{tmp}/fb-bad.jsonl"],
        "run_config:train-minilm.toml",
        2,
        "holds no valid feedback: 2 bad lines",
    ),
    # one line cut mid-UTF-8 (a crash mid-append): the good line is read, and the run goes on to its data
    "feedback store with a line cut mid-UTF-8": (
        ["train", "--no-mlflow", "--feedback", "{tmp}/fb-cut.jsonl"],
        "run_config:train-minilm.toml",
        2,
        "missing data file",
    ),
    "secret in the config file": (["topics"], "config_with_secret", 2, "FINSENT_WEB__TOKEN"),
    "bad replay speed": (["replay", "--speed", "fast"], {}, 2, "speed"),
    "missing import file": (["ingest", "import", "/nonexistent/news.csv", "--map", "title=t"], {}, 2, "no such file"),
    "bad import mapping": (["ingest", "import", "/nonexistent/news.csv", "--map", "nonsense"], {}, 2, "--map"),
    "missing feed list": (["ingest", "--once", "--feeds", "/nonexistent/feeds.toml"], {}, 2, "feeds.toml"),
    "grafana without token": (["grafana", "publish"], {}, 2, "FINSENT_GRAFANA__TOKEN"),
    # replay and backtest options: found before anything runs ({tmp}: this test's folder, with prices.csv and a-file)
    "replay speed nan": (["replay", "--speed", "nan"], {}, 2, "finite positive"),
    "replay, --from after --to": (["replay", "--from", "2020-02-01", "--to", "2020-01-01"], {}, 2, "not before --to"),
    "refill batch 0": (["ingest", "refill", "--since", "2020-01-01", "--batch", "0"], {}, 2, "--batch"),
    "backtest batch 0": (["backtest", "--out", "{tmp}/out", "--batch", "0"], {}, 2, "--batch"),
    "backtest, --from after --to": (
        ["backtest", "--out", "{tmp}/out", "--from", "2020-02-01", "--to", "2020-01-01"],
        {},
        2,
        "not before",
    ),
    "backtest, --out is a file": (["backtest", "--out", "{tmp}/a-file"], {}, 2, "is a file"),
    "backtest, missing price file": (
        ["backtest", "--out", "{tmp}/out", "--prices", "{tmp}/nope.csv"],
        {},
        2,
        "nope.csv: no such file",
    ),
    "backtest, bad price map": (
        ["backtest", "--out", "{tmp}/out", "--prices", "{tmp}/prices.csv", "--price-map", "close"],
        {},
        2,
        "FIELD=",
    ),
    "backtest, price map names no column": (
        ["backtest", "--out", "{tmp}/out", "--prices", "{tmp}/prices.csv", "--price-map", "close=Close"],
        {},
        2,
        "missing price columns ['Close']",
    ),
    # session 39's reviews: paths that cannot be used, options checked before anything loads (were tracebacks)
    "ingest, output is a folder": (
        ["ingest", "--once", "--feeds", "{tmp}/feeds.toml", "--output", "{tmp}"],
        {},
        2,
        "not a regular file",
    ),
    # no fsync, no cutting back: it was written on every poll and never counted as sent
    "ingest, output is a device": (
        ["ingest", "--once", "--feeds", "{tmp}/feeds.toml", "--output", "/dev/null"],
        {},
        2,
        "not a regular file",
    ),
    "ingest, output under a file": (
        ["ingest", "--once", "--feeds", "{tmp}/feeds.toml", "--output", "{tmp}/a-file/out.jsonl"],
        {},
        1,
        "a-file: File exists",
    ),
    "backtest, --out under a file": (["backtest", "--out", "{tmp}/a-file/sub"], {}, 1, "a-file/sub: Not a directory"),
    "import, unknown time zone": (
        ["ingest", "import", "{tmp}/prices.csv", "--map", "title=t", "--timezone", "Mars/Base"],
        {},
        2,
        "not an IANA time zone",
    ),
    "eval, unknown backend": (["eval", "--backend", "gpu"], {}, 2, "--backend 'gpu': choose from auto"),
    "worker, no model and no broker": (
        ["worker", "--model", "/nonexistent/model"],
        "dead_broker",
        2,
        "not a finsent model directory",
    ),
    "kafka CA file missing": (["topics"], {"FINSENT_KAFKA__SSL_CAFILE": "/nonexistent/ca.pem"}, 2, "no such file"),
    "alertmanager config, receiver address not host:port": (
        ["receiver", "alertmanager-config", "{tmp}/am", "--receiver-address", "not an address"],
        {"FINSENT_SERVICES__ALERTMANAGER_PASSWORD": "pw"},
        2,
        "expected host:port",
    ),
    "backtest, no news in range": (
        [
            "backtest",
            "--out",
            "{tmp}/out",
            "--from",
            "2020-01-01",
            "--to",
            "2020-02-01",
            "--prices",
            "{tmp}/prices.csv",
        ],
        {},
        2,
        "nothing to backtest",
    ),
    # without --prices too: it wrote empty outputs, said "0 items … results in …" and exited 0
    "backtest, no archive": (
        ["backtest", "--out", "{tmp}/out"],
        {},
        2,
        "(there is no such folder): nothing to backtest",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_usual_failure_is_one_line_with_its_exit_code_and_no_traceback(case, tmp_path, taken_port):
    argv, env, code, says = CASES[case]
    if env == "dead_broker":
        env = dead_broker()
    elif isinstance(env, str) and env.startswith(
        "run_config:"
    ):  # a shipped run config, pointed at data that is not there, writing nowhere real
        config = tmp_path / "run.toml"
        lines = (ROOT / "configs" / env.split(":", 1)[1]).read_text().splitlines()
        config.write_text(
            "\n".join(
                f'data_dir = "{tmp_path / "no-shared-data"}"' if line.startswith("data_dir") else line for line in lines
            )
        )
        argv, env = [*argv, "--run-config", str(config), "--out-dir", str(tmp_path / "models")], {}
    elif isinstance(env, str) and env.startswith("run_text:"):  # a run config of these lines, writing nowhere real
        config = tmp_path / "run.toml"
        config.write_text(env.split(":", 1)[1].replace("{tmp}", str(tmp_path)) + "\nmlflow = false\n")
        argv, env = [*argv, "--run-config", str(config), "--out-dir", str(tmp_path / "models")], {}
    elif env == "config_with_secret":  # secrets come only from the environment
        config = tmp_path / "finsent.toml"
        config.write_text('[web]\ntoken = "s3cret"\n')
        env = {"FINSENT_CONFIG": str(config)}
    elif isinstance(env, str) and env.startswith("taken:"):
        env = {env.split(":", 1)[1]: str(taken_port)}
    elif env == "bad_audit_log":  # a file where the audit log belongs that is not SQLite
        (tmp_path / "state" / "receiver").mkdir(parents=True)
        (tmp_path / "state" / "receiver" / "audit.sqlite").write_text("not a database\n" * 100)
        env = {}
    (tmp_path / "prices.csv").write_text("date,ticker,close\n2020-01-02,AAA,10\n2020-01-03,AAA,11\n")
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "feeds.toml").write_text('[[feeds]]\nname = "x"\nurl = "http://127.0.0.1:9/rss"\n')
    (tmp_path / "fb-empty.jsonl").write_bytes(b"")
    (tmp_path / "fb-bad.jsonl").write_text('{not json\n{"v": 2, "item_id": "a1", "sentiment": "bearish"}\n')
    good = '{"v":2,"item_id":"a1","text":"Oil slumps","sentiment":"negative","who":"ana","at":"2026-01-01T00:00:00Z"}'
    (tmp_path / "fb-cut.jsonl").write_bytes(f"{good}\n{good[:40]}Soci\u00e9t\u00e9".encode()[:-1])
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    env = {name: value.replace("{tmp}", str(tmp_path)) for name, value in env.items()}
    proc = finsent(tmp_path, *argv, **env)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-1000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in proc.stderr.split(errors[0], 1)[1] + errors[0], proc.stderr[-1000:]


def test_debug_shows_the_traceback_of_an_expected_failure(tmp_path):
    proc = finsent(tmp_path, "--debug", "eval", "--no-mlflow")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "MissingData" in proc.stderr


def test_a_taken_port_stops_a_service_with_one_line_naming_the_setting(tmp_path, taken_port):
    """uvicorn met the taken port itself: its own text line, and exit code 3, which finsent means for "a gate
    refused". Now a Conflict (1) naming the setting, and every other line on stderr finsent's JSON."""
    for argv, env, setting in (
        (["serve"], {"FINSENT_WEB__PORT": str(taken_port)}, "web.port (FINSENT_WEB__PORT)"),
        (
            ["receiver"],
            {"FINSENT_RECEIVER__PORT": str(taken_port), **dead_broker()},
            "receiver.port (FINSENT_RECEIVER__PORT)",
        ),
        # prometheus_client's /metrics server raised an OSError traceback; run outside a checkout, this also finds
        # the shipped feed list (the default once was a path relative to the working directory)
        (
            ["ingest"],
            {"FINSENT_INGEST__METRICS_PORT": str(taken_port), **dead_broker()},
            "ingest.metrics_port (FINSENT_INGEST__METRICS_PORT)",
        ),
        # checked before the broker wait and the model load
        (
            ["worker"],
            {"FINSENT_STREAM__METRICS_PORT": str(taken_port), **dead_broker()},
            "stream.metrics_port (FINSENT_STREAM__METRICS_PORT)",
        ),
    ):
        proc = finsent(tmp_path, *argv, **env)
        assert proc.returncode == 1, (argv, proc.returncode, proc.stderr[-2000:])
        lines = proc.stderr.splitlines()
        assert lines[-1] == f"error: 127.0.0.1:{taken_port} is already in use; set {setting} to a free port", lines
        assert all(line.startswith("{") for line in lines[:-1]), proc.stderr[-2000:]
