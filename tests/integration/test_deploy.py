"""deploy/: what can be checked without a Docker engine or a Kubernetes cluster (neither runs here).

* compose.yaml: validated against the Compose Specification JSON schema (vendored, see
  tests/fixtures/schemas/README.md), plus the checks the schema cannot make: every depends_on target
  exists, every bind-mounted file exists in the repo, ports bind 127.0.0.1, images are pinned, no
  literal secrets, healthchecks and restart policies, GPU reservation, both Kafka profiles consistent;
* least privilege: each finsent container (compose service, Kubernetes Deployment or Job) gets exactly the secret
  variables its command reads, from per-purpose env files / one secretKeyRef per key;
* the Prometheus config: the real ``promtool check config`` with the rule files the compose file mounts;
  the Alertmanager config the compose job renders: the real ``amtool check-config``, and its web config
  (basic auth) served by the real Alertmanager, which must refuse silences without the password;
* the Dockerfile: hadolint;
* the Kubernetes manifests: kubernetes-validate --strict against the Kubernetes 1.31 schemas, both kustomizations
  built by the real ``kubectl kustomize``, the PodMonitors against the operator's CRD schema (the fields used);
* Grafana provisioning and dashboard paths referenced by the compose file exist;
* deploy/SCALING.md's sizing basis is read back from the bench/results files it names.
A negative control for each validator shows it rejects a broken file (none of these can pass vacuously).
"""

from __future__ import annotations

import base64
import glob
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = json.loads((Path(__file__).parents[1] / "fixtures" / "schemas" / "compose-spec.json").read_text())
FINSENT_SERVICES = {
    "topic-init",
    "ingest",
    "worker-aggregator",
    "worker",
    "worker-gpu",
    "receiver",
    "api",
    "alertmanager-config",
}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} interpolation, with the defaults (or ``env``)."""
    env = env or {}
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), value)


def bind_sources(service: dict) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes", []):
        source, _, target = interpolate(v).partition(":")
        if source.startswith((".", "/")):
            out.append((source, target.split(":")[0]))
    return out


def as_compose_loads_it(doc):
    """What compose validates: the file after ${VAR:-default} interpolation and casting of numeric fields."""
    if isinstance(doc, dict):
        return {
            k: (int(v) if k == "replicas" and isinstance(v, str) else v)
            for k, v in ((k, as_compose_loads_it(v)) for k, v in doc.items())
        }
    if isinstance(doc, list):
        return [as_compose_loads_it(v) for v in doc]
    return interpolate(doc) if isinstance(doc, str) else doc


def test_compose_file_matches_the_compose_specification_schema():
    validator = jsonschema.Draft201909Validator(SCHEMA)
    doc = as_compose_loads_it(compose())
    # The top-level project name joined the spec in 2022, after the vendored schema; checked by hand.
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", doc.pop("name"))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    doc["services"]["api"]["healthcheck"]["intervall"] = "5s"  # negative control: the validator is strict
    assert not validator.is_valid(doc)


def test_compose_services_are_wired_to_each_other_and_to_files_that_exist():
    doc = compose()
    services = doc["services"]
    assert FINSENT_SERVICES | {"kafka-1", "kafka-2", "kafka-3", "prometheus", "alertmanager", "grafana"} == set(
        services
    )
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown {dep}"
        for source, _ in bind_sources(svc):
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, missing from the repo"
        for named in (v.split(":")[0] for v in svc.get("volumes", [])):
            if not named.startswith((".", "/", "$")):
                assert named in doc["volumes"], f"{name}: undeclared volume {named}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
        image = interpolate(svc["image"])
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        if svc.get("restart") != "no":
            assert svc.get("restart") == "unless-stopped" and "healthcheck" in svc, (
                f"{name}: restart policy / healthcheck"
            )
        for env_file in svc.get("env_file", []):
            assert (DEPLOY / f"{env_file}.example").exists(), f"{name}: {env_file} has no committed example"
            assert subprocess.run(["git", "check-ignore", "-q", f"deploy/{env_file}"], cwd=ROOT).returncode == 0, (
                f"deploy/{env_file} (secrets) is not git-ignored"
            )
    # The one-box topology from the issue: ingest, an aggregating worker, scaled scoring workers (CPU, GPU).
    assert services["worker-aggregator"]["command"] == ["worker"]
    assert services["worker"]["command"] == services["worker-gpu"]["command"] == ["worker", "--no-aggregate"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert (
        gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia" and services["worker-gpu"]["profiles"] == ["gpu"]
    )
    assert (
        services["kafka-2"]["profiles"] == services["kafka-3"]["profiles"] == ["kafka3"]
        and "profiles" not in services["kafka-1"]
    )


def test_no_secret_is_written_into_deploy_files():
    for path in DEPLOY.rglob("*"):
        if path.is_file() and not path.name.endswith(".example") and path.suffix not in {".md"}:
            text = path.read_text()
            for m in re.finditer(r"(?im)^\s*-?\s*\"?(\w*(TOKEN|PASSWORD|SECRET)\w*)\"?\s*[:=]\s*(\S+)", text):
                if m.group(1).lower().endswith("_file") and m.group(3).startswith("/"):
                    continue  # where a secret is read from (password_file: /path), written there at run time
                assert m.group(3).startswith(("${", "{")) or m.group(3) in {"''", '""'}, f"{path}: literal {m.group(1)}"


def test_both_kafka_profiles_agree_on_brokers_voters_and_replication():
    doc = compose()
    vars3 = dict(
        line.split("=", 1)
        for line in (DEPLOY / "kafka3.vars").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    for env, brokers in (({}, ["kafka-1"]), (vars3, ["kafka-1", "kafka-2", "kafka-3"])):
        bootstrap = interpolate(doc["x-finsent"]["environment"]["FINSENT_KAFKA__BOOTSTRAP"], env)
        assert bootstrap == ",".join(f"{b}:9092" for b in brokers)
        voters = interpolate(doc["x-kafka-env"]["KAFKA_CONTROLLER_QUORUM_VOTERS"], env)
        assert voters == ",".join(f"{i + 1}@{b}:9093" for i, b in enumerate(brokers))
        rf = int(interpolate(doc["x-finsent"]["environment"]["FINSENT_KAFKA__REPLICATION_FACTOR"], env))
        isr = int(interpolate(doc["x-kafka-env"]["KAFKA_MIN_INSYNC_REPLICAS"], env))
        assert rf == len(brokers) and (isr < rf or rf == 1)  # acks=all survives one broker down with 3
    for i in (1, 2, 3):
        node = doc["services"][f"kafka-{i}"]["environment"]
        assert node["KAFKA_NODE_ID"] == str(i) and node["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{i}:9092"


def test_prometheus_config_and_the_mounted_rules_pass_promtool(tmp_path):
    """Rebuild the container's file layout from the compose mounts, then run the real promtool on it."""
    prom = compose()["services"]["prometheus"]
    mounts = {target: source for source, target in bind_sources(prom)}
    config = yaml.safe_load((DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    rules_dir = (DEPLOY / mounts["/etc/prometheus/rules"]).resolve()
    assert rules_dir == ROOT / "alerts" / "rules" and list(rules_dir.glob("*.yml"))
    config["rule_files"] = [f.replace("/etc/prometheus/rules", str(rules_dir)) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout and "rules found" in out.stdout, out.stdout + out.stderr
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert {"worker", "ingest", "receiver", "api", "alertmanager", "prometheus", "grafana"} <= jobs
    grafana = next(j for j in config["scrape_configs"] if j["job_name"] == "grafana")
    assert grafana["static_configs"][0]["targets"] == ["grafana:3000"]  # compose's grafana, its /metrics
    worker_names = next(j for j in config["scrape_configs"] if j["job_name"] == "worker")["dns_sd_configs"][0]["names"]
    assert set(worker_names) == {"worker", "worker-aggregator", "worker-gpu"}  # every worker flavour is job="worker"
    config["scrape_configs"][0]["scrape_interval"] = "fifteen seconds"  # negative control
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(config))
    assert (
        subprocess.run(["promtool", "check", "config", str(tmp_path / "broken.yml")], capture_output=True).returncode
        != 0
    )


def run_the_alertmanager_config_job(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    """The compose job's own command, its container paths (the volumes) moved under ``tmp_path``.
    Returns the run and {container path: local path} for the directories it writes."""
    command = compose()["services"]["alertmanager-config"]["command"]
    where = {command[2]: tmp_path / "am"}
    if "--password-file" in command:
        where[str(Path(command[command.index("--password-file") + 1]).parent)] = tmp_path / "prometheus-auth"
    argv = [next((str(where[d] / Path(a).relative_to(d)) for d in where if a.startswith(d)), a) for a in command]
    run = subprocess.run(
        [sys.executable, "-m", "finsent.cli", *argv],
        env={"PATH": "/usr/bin:/bin", "FINSENT_PATHS__STATE_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run, where


def test_the_alertmanager_config_the_compose_job_renders_passes_amtool(tmp_path):
    job = compose()["services"]["alertmanager-config"]
    env = {"FINSENT_RECEIVER__TOKEN": "t0ken-from-env", "FINSENT_SERVICES__ALERTMANAGER_PASSWORD": "pw-from-env"}
    run, where = run_the_alertmanager_config_job(tmp_path, env)
    out_dir = where[job["command"][2]]
    assert run.returncode == 0, run.stderr
    rendered = (out_dir / "alertmanager.yml").read_text()
    assert "http://receiver:9184/alertmanager" in rendered and "t0ken-from-env" not in rendered
    assert (out_dir / "receiver-token").read_text() == "t0ken-from-env"
    amtool = shutil.which("amtool") or "/usr/bin/amtool"
    check = subprocess.run([amtool, "check-config", str(out_dir / "alertmanager.yml")], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    am = compose()["services"]["alertmanager"]
    assert f"--config.file={job['command'][2]}/alertmanager.yml" in am["command"]  # the volume path both use


def alertmanager_binary() -> str:
    found = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    if found is None:
        pytest.skip("no Alertmanager binary (Debian package prometheus-alertmanager): cannot serve the web config")
    return found


def free_port_in(low: int = 25000, high: int = 26000) -> int:
    for port in range(low, high):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high - 1}")


def http_status(url: str, method: str = "GET", body: bytes | None = None, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_compose_alertmanager_refuses_silences_without_the_password_the_config_job_sets(tmp_path):
    """What the job renders, served by the real Alertmanager with compose's own flags: a silence posted without
    the password (any web page can: the API allows every origin) gets 401; Prometheus' credentials (the username
    and password file of its prometheus.yml, on the volume the job writes) get 200; the healthcheck's 401 test
    passes against that server only."""
    binary = alertmanager_binary()
    services = compose()["services"]
    job, am, prom = services["alertmanager-config"], services["alertmanager"], services["prometheus"]
    run, where = run_the_alertmanager_config_job(
        tmp_path, {"FINSENT_RECEIVER__TOKEN": "t0ken", "FINSENT_SERVICES__ALERTMANAGER_PASSWORD": "s3cret-pw"}
    )
    assert run.returncode == 0, run.stderr

    def local(container_path: str) -> Path:
        return next(where[d] / Path(container_path).relative_to(d) for d in where if container_path.startswith(d))

    # compose's own flags: the files from the job's volume, storage and listener moved here
    argv = [binary]
    for flag in am["command"]:
        name, _, value = flag.removeprefix("--").partition("=")
        if name in ("config.file", "web.config.file"):
            argv.append(f"--{name}={local(value)}")
        elif name not in ("storage.path", "web.listen-address", "web.external-url", "cluster.listen-address"):
            argv.append(flag)
    port = free_port_in()
    url = f"http://127.0.0.1:{port}"
    argv += [
        f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = http_status(f"{url}/-/ready")
                break
            except OSError:
                assert child.poll() is None, child.stderr.read().decode() if child.stderr else "exited"
                assert time.monotonic() < deadline, "Alertmanager did not start listening in 30 s"
                time.sleep(0.2)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        silence = json.dumps(
            {
                "matchers": [{"name": "alertname", "value": "NegativeSentimentSurge", "isRegex": False}],
                "startsAt": now,
                "endsAt": later,
                "createdBy": "a web page",
                "comment": "mute every surge",
            }
        ).encode()
        assert http_status(f"{url}/api/v2/silences", "POST", silence) == 401, "a silence without the password"
        assert status == 401  # every endpoint, readiness included: the healthcheck looks for this 401
        prom_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        am_job = next(j for j in prom_config["scrape_configs"] if j["job_name"] == "alertmanager")
        auths = [prom_config["alerting"]["alertmanagers"][0]["basic_auth"], am_job["basic_auth"]]
        assert auths[0] == auths[1]  # sending alerts and scraping: the same credentials
        user, password_file = auths[0]["username"], auths[0]["password_file"]
        # Prometheus reads the password from the volume the job writes it to, mounted at the path it names
        mounted = {t: s for s, t in (v.split(":")[:2] for v in prom["volumes"])}
        assert mounted[str(Path(password_file).parent)] in {v.split(":")[0] for v in job["volumes"]}
        password = local(password_file)
        assert not password.stat().st_mode & 0o077 and password.read_text().strip() == "s3cret-pw"
        assert http_status(f"{url}/api/v2/silences", "POST", silence, (user, "wrong")) == 401
        assert http_status(f"{url}/api/v2/silences", "POST", silence, (user, password.read_text().strip())) == 200
        web_config = local(next(f.split("=", 1)[1] for f in am["command"] if f.startswith("--web.config.file=")))
        assert "s3cret-pw" not in web_config.read_text() and not web_config.stat().st_mode & 0o077  # a hash only
        health = am["healthcheck"]["test"]
        assert health[0] == "CMD-SHELL" and "127.0.0.1:9093" in health[1]
        check = health[1].replace("127.0.0.1:9093", f"127.0.0.1:{port}")
        assert subprocess.run(["sh", "-c", check], timeout=30).returncode == 0
        assert subprocess.run(["sh", "-c", check.replace(str(port), str(free_port_in()))], timeout=30).returncode
    finally:
        child.terminate()
        child.wait(timeout=30)


def test_the_compose_alertmanager_config_job_refuses_to_run_without_the_password(tmp_path):
    for env in ({}, {"FINSENT_SERVICES__ALERTMANAGER_PASSWORD": ""}):
        run, where = run_the_alertmanager_config_job(tmp_path, {"FINSENT_RECEIVER__TOKEN": "t0ken", **env})
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and "FINSENT_SERVICES__ALERTMANAGER_PASSWORD" in lines[0], (
            run.stderr
        )
        assert not any(d.exists() and any(d.iterdir()) for d in where.values())  # nothing half-written


def test_grafana_gets_finsents_provisioning_and_dashboards():
    mounts = {target: source for source, target in bind_sources(compose()["services"]["grafana"])}
    provisioning = (DEPLOY / mounts["/etc/grafana/provisioning"]).resolve()
    dashboards = (DEPLOY / mounts["/var/lib/grafana/dashboards/finsent"]).resolve()
    assert provisioning == ROOT / "alerts" / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "finsent.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/finsent"  # where compose mounts them
    assert len(list(dashboards.glob("*.json"))) >= 3
    datasource = yaml.safe_load((provisioning / "datasources" / "finsent.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


def test_dockerfile_passes_hadolint_and_runs_as_non_root(tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = dockerfile.read_text()
    assert re.search(r"^USER 10001", text, re.M) and text.count("FROM ") == 2  # multi-stage, non-root
    assert "torch==2.13.0" in text and "--index-url" in text  # the flavour's torch, never the default CUDA pull
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
    (tmp_path / "Dockerfile").write_text("FROM python\nRUN apt-get install curl\n")  # negative control
    assert subprocess.run([hadolint, str(tmp_path / "Dockerfile")], capture_output=True).returncode != 0


# The PodMonitor (monitoring.coreos.com/v1) schema, cut down to the fields finsent's manifests use, copied from the
# Prometheus Operator's CRD (prometheus-operator/prometheus-operator,
# example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml, operator 0.91.0: the openAPIV3Schema's
# spec.selector, spec.podMetricsEndpoints[].{port,path,interval,relabelings}, the relabel action enum, the
# required selector). Strict as kubernetes-validate --strict is: a field outside it is an error, so a typo
# (which the API server would silently prune) fails here.
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_RELABEL_ACTIONS = [
    *("replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap"),
    *("labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase"),
    *("keepequal", "KeepEqual", "dropequal", "DropEqual"),
]
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
                            },
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {"enum": _RELABEL_ACTIONS},
                                        "modulus": {"type": "integer"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "separator": {"type": "string"},
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                        },
                                        "targetLabel": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
K8S_DIRS = ("k8s", "k8s-gpu")  # the base and the opt-in GPU overlay


def validate_k8s_doc(doc: dict) -> None:
    """Core kinds: kubernetes-validate --strict (1.31); the Prometheus Operator's PodMonitor: its schema above."""
    import kubernetes_validate

    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, PODMONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, "1.31.0", strict=True)


def test_kubernetes_manifests_validate_strictly():
    import kubernetes_validate

    kinds = []
    for folder in K8S_DIRS:
        kustomization = yaml.safe_load((DEPLOY / folder / "kustomization.yaml").read_text())
        files = sorted(p.name for p in (DEPLOY / folder).glob("*.yaml") if p.name != "kustomization.yaml")
        assert sorted(r for r in kustomization["resources"] if r.endswith(".yaml")) == files, folder
        for name in files:
            for doc in yaml.safe_load_all((DEPLOY / folder / name).read_text()):
                if doc:
                    validate_k8s_doc(doc)
                    kinds.append((folder, doc["kind"], doc["metadata"]["name"]))
    assert yaml.safe_load((DEPLOY / "k8s-gpu" / "kustomization.yaml").read_text())["resources"] == [
        "../k8s",
        "worker-gpu.yaml",
    ]  # the overlay is the base plus the GPU workers
    assert {
        ("k8s", "Deployment", "finsent-worker"),
        ("k8s-gpu", "Deployment", "finsent-worker-gpu"),
        ("k8s", "HorizontalPodAutoscaler", "finsent-worker"),
        ("k8s", "Deployment", "finsent-worker-aggregator"),
        ("k8s", "Job", "finsent-topic-init"),
        ("k8s", "PodMonitor", "finsent-worker"),
    } <= set(kinds)
    workers = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "k8s-gpu" / "worker-gpu.yaml").read_text()) if d
    }
    limits = workers["finsent-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    settings = yaml.safe_load((DEPLOY / "k8s" / "config.yaml").read_text())["data"]
    hpa = next(d for d in k8s_docs("worker.yaml") if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] + 1 == int(settings["FINSENT_TOPICS__RAW__PARTITIONS"])  # + the aggregator
    bad = yaml.safe_load((DEPLOY / "k8s" / "topic-init.yaml").read_text())
    bad["spec"]["template"]["spec"]["containers"][0]["argz"] = ["topics"]  # negative control
    with pytest.raises(Exception):  # noqa: B017 - the validator's own error types differ by version
        kubernetes_validate.validate(bad, "1.31.0", strict=True)
    monitor = next(d for d in k8s_docs("podmonitors.yaml") if d["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacment"] = "worker"  # negative control
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s_doc(monitor)


def kustomize(folder: str) -> list[dict]:
    """The real `kubectl kustomize` build of deploy/<folder> (no cluster needed)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: cannot build the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def consumer_group_members(docs: list[dict]) -> int:
    """The most members the scoring consumer group can have: every Deployment running `finsent worker` (the
    aggregating worker scores too), at its HPA's maxReplicas where one scales it."""
    ceilings = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"]["maxReplicas"]
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    return sum(
        ceilings.get(d["metadata"]["name"], d["spec"].get("replicas", 1))
        for d in docs
        if d["kind"] == "Deployment" and d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker"
    )


def gpu_deployments(docs: list[dict]) -> set[str]:
    return {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Deployment"
        and any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            for c in d["spec"]["template"]["spec"]["containers"]
        )
    }


def test_kubernetes_gpu_workers_are_opt_in_and_members_never_exceed_the_raw_partitions():
    """A member beyond the raw topic's partition count idles; a GPU pod on a cluster without GPUs stays Pending."""
    for folder, gpus in (("k8s", set()), ("k8s-gpu", {"finsent-worker-gpu"})):
        docs = kustomize(folder)
        settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "finsent-settings")
        partitions = int(settings["data"]["FINSENT_TOPICS__RAW__PARTITIONS"])
        members = consumer_group_members(docs)
        assert members <= partitions, f"{folder}: up to {members} consumer-group members for {partitions} partitions"
        assert members == partitions, f"{folder}: the HPA could go to {partitions} members, stops at {members}"
        assert gpu_deployments(docs) == gpus, folder
        for doc in docs:
            validate_k8s_doc(doc)
    # The compose file: the GPU workers behind a profile; its defaults within the partitions too.
    services = compose()["services"]
    compose_members = 1 + int(interpolate(str(services["worker"]["deploy"]["replicas"])))
    compose_members += int(interpolate(str(services["worker-gpu"]["deploy"]["replicas"])))
    assert compose_members <= int(interpolate(compose()["x-finsent"]["environment"]["FINSENT_TOPICS__RAW__PARTITIONS"]))


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if (
            (op == "In" and value not in expr["values"])
            or (op == "NotIn" and value in expr["values"])
            or (op == "Exists" and value is None)
            or (op == "DoesNotExist" and value is not None)
        ):
            return False
    return True


def jobs_selected_by_rules_and_dashboards() -> set[str]:
    """Every job name alerts/rules/*.yml and the Grafana dashboards select (job="x", job=~"a|b")."""
    texts = [p.read_text() for p in (ROOT / "alerts" / "rules").glob("*.yml")]
    texts += [p.read_text() for p in (ROOT / "alerts" / "grafana" / "dashboards").glob("*.json")]
    jobs = set()
    for text in texts:
        for match in re.finditer(r'\bjob\s*(=~|=)\s*\\?"([^"\\]+)', text):
            jobs.update(match.group(2).split("|") if match.group(1) == "=~" else [match.group(2)])
    return jobs


def test_podmonitors_give_every_job_the_alert_rules_and_dashboards_select():
    """kube-prometheus-stack ignores prometheus.io/scrape annotations and names a PodMonitor's job
    <namespace>/<name>: unless a PodMonitor relabels job to "worker", up{job="worker"} is absent and WorkerDown and
    AggregatorDown fire for ever. Every job the rules select must come out of some PodMonitor that finds pods
    with the port it scrapes, as compose's prometheus.yml gives the same names."""
    needed = jobs_selected_by_rules_and_dashboards()
    assert {"worker", "ingest"} <= needed  # the parse finds the rules' selectors
    scrape_configs = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert needed <= {j["job_name"] for j in scrape_configs}  # compose
    monitors = [d for d in kustomize("k8s") if d["kind"] == "PodMonitor"]
    produced: dict[str, list[tuple[dict, dict]]] = {}
    for monitor in monitors:
        validate_k8s_doc(monitor)
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            job_rules = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
            assert job_rules, f"{monitor['metadata']['name']}: the job would be <namespace>/<name>"
            last = job_rules[-1]  # the operator's own job relabeling comes first; the last one wins
            assert last.get("action", "replace").lower() == "replace" and not last.get("sourceLabels")
            produced.setdefault(last["replacement"], []).append((monitor, endpoint))
    assert needed <= set(produced), f"no PodMonitor gives job {sorted(needed - set(produced))}"
    pods = [d for d in kustomize("k8s-gpu") if d["kind"] == "Deployment"]  # the base's pods and the GPU workers
    scraped: dict[str, set[str]] = {}
    for job, pairs in produced.items():
        for monitor, endpoint in pairs:
            labels = [d["spec"]["template"]["metadata"]["labels"] for d in pods]
            selected = [d for d, lab in zip(pods, labels, strict=True) if selects(monitor["spec"]["selector"], lab)]
            assert selected, f"{monitor['metadata']['name']} selects no pod"
            for pod in selected:
                ports = {p["name"] for c in pod["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                assert endpoint["port"] in ports, f"{pod['metadata']['name']} has no port {endpoint['port']}"
                scraped.setdefault(job, set()).add(pod["metadata"]["name"])
    workers = {
        d["metadata"]["name"] for d in pods if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker"
    }
    assert workers == scraped["worker"]  # every worker flavour, the aggregating one too, is job="worker"
    assert {"finsent-worker", "finsent-worker-aggregator", "finsent-worker-gpu"} <= workers


def test_the_worker_is_configured_only_by_settings_in_every_topology():
    """The same `finsent worker` command against Tansu (demo), Apache Kafka (compose) and Kubernetes: only FINSENT_* differs."""
    from finsent.settings import Settings

    doc = compose()
    env = {k: interpolate(str(v)) for k, v in doc["x-finsent"]["environment"].items()}
    s = Settings(**_nested(env))
    assert s.kafka.bootstrap == "kafka-1:9092" and s.topics.raw.partitions == 12
    k8s = yaml.safe_load((DEPLOY / "k8s" / "config.yaml").read_text())["data"]
    s = Settings(**_nested(k8s))
    assert s.kafka.replication_factor == 3 and s.services.host == "0.0.0.0"


def test_the_api_reaches_the_receiver_by_its_service_name_in_every_topology():
    """The dashboard's open-alerts view (/cases) goes through the receiver at Settings.receiver_url. In compose
    and Kubernetes finsent binds 0.0.0.0, which receiver_url reads as 127.0.0.1: the API's own container, where no
    receiver runs (502). Each topology must name the receiver's service, on the port the receiver serves."""
    from urllib.parse import urlsplit

    from finsent.settings import Settings

    demo = Settings()  # the embedded demo: everything on 127.0.0.1
    assert demo.receiver_url == f"http://127.0.0.1:{demo.receiver.port}"

    doc = compose()
    services = doc["services"]
    assert services["receiver"]["command"] == ["receiver"]

    def compose_env(name: str) -> dict[str, str]:
        env = {**doc["x-finsent"]["environment"], **services[name].get("environment", {})}
        return {k: interpolate(str(v)) for k, v in env.items()}

    api, receiver = Settings(**_nested(compose_env("api"))), Settings(**_nested(compose_env("receiver")))
    url = urlsplit(api.receiver_url)
    assert (url.hostname, url.port) == ("receiver", receiver.receiver.port), api.receiver_url

    config = yaml.safe_load((DEPLOY / "k8s" / "config.yaml").read_text())["data"]

    def k8s_env(deployment: dict) -> dict[str, str]:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {**config, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}  # no secrets

    api_deployment = next(d for d in k8s_docs("api.yaml") if d["kind"] == "Deployment")
    receiver_docs = k8s_docs("receiver.yaml")
    receiver_deployment = next(d for d in receiver_docs if d["kind"] == "Deployment")
    pod_labels = receiver_deployment["spec"]["template"]["metadata"]["labels"]
    service = next(
        d
        for d in receiver_docs
        if d["kind"] == "Service" and selects({"matchLabels": d["spec"]["selector"]}, pod_labels)
    )
    api, receiver = Settings(**_nested(k8s_env(api_deployment))), Settings(**_nested(k8s_env(receiver_deployment)))
    url = urlsplit(api.receiver_url)
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert url.hostname in {f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"}, api.receiver_url
    service_port = service["spec"]["ports"][0]
    assert url.port == service_port["port"], api.receiver_url
    container = receiver_deployment["spec"]["template"]["spec"]["containers"][0]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[service_port["targetPort"]] == receiver.receiver.port  # the port the receiver serves


def _nested(env: dict[str, str]) -> dict:
    """FINSENT_A__B=v -> {"a": {"b": v}} (what pydantic-settings does with the environment)."""
    out: dict = {}
    for key, value in env.items():
        if not key.startswith("FINSENT_") or key == "FINSENT_LOG_JSON":
            continue
        parts = key.removeprefix("FINSENT_").lower().split("__")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# ---- data directories, volumes, the token file, network policy --------------------------------------------

FINSENT_UID = 10001
ALERTMANAGER_UID = 65534  # prom/alertmanager runs as nobody


def runtime_instructions() -> list[tuple[str, str]]:
    """The runtime stage's instructions (after the last FROM), continuation lines joined: (INSTRUCTION, rest)."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "docker" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return [tuple(line.split(" ", 1)) for line in lines[last_from:]]  # type: ignore[misc]


def image_dirs() -> dict[str, tuple[int, int]]:
    """Directories the runtime stage creates with `install -d -o UID`: path -> (owner, instruction index)."""
    out = {}
    for i, (op, rest) in enumerate(runtime_instructions()):
        if op != "RUN":
            continue
        for cmd in re.findall(r"install -d ([^&;]+)", rest):
            words = cmd.split()
            owner = int(words[words.index("-o") + 1])
            flags_end = max(words.index(f) + 2 for f in ("-o", "-g", "-m") if f in words)
            for path in words[flags_end:]:
                out[path] = (owner, i)
    return out


def service_uid(svc: dict) -> int:
    return int(str(svc.get("user", FINSENT_UID)).split(":")[0])


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def test_the_image_creates_every_volume_directory_owned_by_its_writer_before_switching_user():
    """Named volumes start as a copy of the image's directory, owner included: missing ones come up root-owned."""
    instructions = runtime_instructions()
    dirs = image_dirs()
    user_at = next(i for i, (op, _) in enumerate(instructions) if op == "USER")
    volume_at = [i for i, (op, _) in enumerate(instructions) if op == "VOLUME"]
    assert instructions[user_at][1].startswith(f"{FINSENT_UID}:")
    doc = compose()
    checked = 0
    for name in FINSENT_SERVICES:
        svc = doc["services"][name]
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/", "$")):
                continue  # a bind mount of a repo file, read-only
            assert target in dirs, f"{name}: {target} (volume {source}) is not created in the image"
            owner, at = dirs[target]
            assert owner == service_uid(svc), f"{name} runs as {service_uid(svc)} but {target} belongs to {owner}"
            assert at < user_at and all(at < v for v in volume_at), f"{target} is created after USER/VOLUME"
            checked += 1
    assert checked >= 5  # archive, ingest state, audit, feedback, alertmanager config
    for name in ("api.yaml", "ingest.yaml", "receiver.yaml"):  # PVCs: the pod's fsGroup makes them writable
        for d in k8s_docs(name):
            if d["kind"] == "Deployment":
                assert d["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == FINSENT_UID, name


def test_the_ingest_dedup_db_is_on_a_volume_in_compose_and_kubernetes():
    service = (ROOT / "ingest" / "service.py").read_text()
    assert 'state / "ingest" / (' in service and '"dedup.sqlite"' in service  # <state_dir>/ingest/dedup.sqlite
    state_dir = re.search(r"FINSENT_PATHS__STATE_DIR=(\S+)", (DEPLOY / "docker" / "Dockerfile").read_text()).group(1)
    dedup = Path(state_dir) / "ingest" / "dedup.sqlite"
    ingest = compose()["services"]["ingest"]
    named = [v.split(":")[:2] for v in ingest["volumes"] if not v.startswith((".", "/", "$"))]
    assert any(dedup.is_relative_to(target) for _, target in named), f"compose: {dedup} is on the container's disk"
    deployment = next(d for d in k8s_docs("ingest.yaml") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims]
    assert any(dedup.is_relative_to(m["mountPath"]) for m in mounts), f"k8s: {dedup} is on the pod's disk"
    pvcs = {d["metadata"]["name"] for d in k8s_docs("ingest.yaml") if d["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} <= pvcs


def test_alertmanager_can_read_the_token_file_the_config_job_writes(tmp_path, monkeypatch):
    """The job writes the token 0600 (owner-only): the job must run as Alertmanager's user, into a directory
    the image gives that user."""
    from conftest import make_settings

    from finsent.local.services import render_alertmanager_config

    services = compose()["services"]
    job, am = services["alertmanager-config"], services["alertmanager"]
    assert service_uid(job) == service_uid(am) == ALERTMANAGER_UID
    out_dir = job["command"][2]
    assert image_dirs()[out_dir][0] == ALERTMANAGER_UID and job["working_dir"] == out_dir
    assert f"alertmanager-config:{out_dir}:ro" in am["volumes"]
    monkeypatch.setenv("FINSENT_RECEIVER__TOKEN", "t0ken")
    render_alertmanager_config(make_settings(tmp_path), tmp_path / "am")
    mode = (tmp_path / "am" / "receiver-token").stat().st_mode & 0o777
    assert mode & 0o400 and not mode & 0o077  # owner-readable only: the owner (the job's uid) is Alertmanager


def test_network_policies_limit_ingest_egress_and_who_reads_the_receiver_and_api():
    policies = {d["metadata"]["name"]: d["spec"] for d in k8s_docs("networkpolicy.yaml")}
    components = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for name in ("ingest.yaml", "receiver.yaml", "api.yaml")
        for d in k8s_docs(name)
        if d["kind"] == "Deployment"
    }

    def policy_for(component: str) -> dict:
        selector = {"app.kubernetes.io/component": component}
        matching = [p for p in policies.values() if p["podSelector"]["matchLabels"] == selector]
        assert len(matching) == 1 and component in components, component
        return matching[0]

    egress = policy_for("finsent-ingest")
    assert egress["policyTypes"] == ["Egress"]
    by_port: dict[int, list] = {}
    for rule in egress["egress"]:
        assert rule.get("ports") and rule.get("to"), "an egress rule without ports or peers allows everything"
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["to"])
    assert set(by_port) == {53, 80, 443, 9092}
    assert all(peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"} for peer in by_port[53])
    web = [peer["ipBlock"] for peer in by_port[443]]
    assert len(web) == len(by_port[443]) and by_port[80] == by_port[443]
    v4 = next(b for b in web if b["cidr"] == "0.0.0.0/0")
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])
    assert all("ipBlock" not in peer and "namespaceSelector" in peer for peer in by_port[9092])

    allowed = {"prometheus", "alertmanager"}
    for component, readers in (("finsent-receiver", {"prometheus", "alertmanager"}), ("finsent-api", {"prometheus"})):
        policy = policy_for(component)
        assert policy["policyTypes"] == ["Ingress"]
        seen = set()
        for rule in policy["ingress"]:
            assert rule.get("from") and rule.get("ports"), f"{component}: a rule open to everyone"
            for peer in rule["from"]:
                if "namespaceSelector" not in peer:
                    assert set(peer) == {"podSelector"} and peer["podSelector"] == {}  # this namespace
                    continue
                name = peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                assert name in allowed and "ipBlock" not in peer, f"{component}: reader {peer}"
                seen.add(name)
        assert seen == readers, component


# ---- deploy/SCALING.md against bench/results --------------------------------------------------------------------

SCALING = DEPLOY / "SCALING.md"


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _field(path: Path, dotted: str) -> float:
    node = json.loads(path.read_text())
    for part in dotted.split("."):
        node = node[part]
    return float(node)


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def sizing_basis(text: str) -> dict[str, dict]:
    """The "Sizing basis" table: letter -> value, unit, file, field, choice."""
    rows = {}
    for line in _section(text, "Sizing basis").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.match(r"\*\*(\w)\*\*", cells[0]) if len(cells) == 5 else None
        if m:
            value, unit = re.fullmatch(r"([\d,.]+) (\S+/s)", cells[1]).groups()
            rows[m.group(1)] = {
                "value": _number(value),
                "unit": unit,
                "file": cells[2].strip("`"),
                "field": cells[3].strip("`"),
                "choice": cells[4],
            }
    return rows


def test_scaling_sizing_basis_is_read_from_the_bench_results():
    """Every figure the sizing divides by is in the bench/results file SCALING.md names (and, where it says so,
    the lowest of the files it names), and the arithmetic divides by those figures only: the doc's basis cannot
    drift from the measurements (it had: 217 and 13,754/s were in no result file)."""
    text = SCALING.read_text()
    recorded = {
        round(_field(Path(f), field))
        for pattern, field in (
            ("stream-*.json", "end_to_end.while_producing.items_per_s"),
            ("stream-cpu*.json", "core.events_per_s"),
            ("ingest-cpu.json", "pipeline.items_per_s"),
        )
        for f in glob.glob(str(ROOT / "bench" / "results" / pattern))
    }
    # Whatever the sizing divides by (⌈peak ÷ N⌉, ⌈peak / N⌉, peak ÷ N) is a figure a benchmark recorded.
    divisors = {_number(d) for d in re.findall(r"(?:⌈[^⌉\n]*?[÷/]|peak ÷)\s*([\d,]+)(?![\d,])", text)}
    assert divisors and divisors <= recorded, f"divides by {sorted(divisors - recorded)}, in no bench/results file"
    basis = sizing_basis(text)
    assert set(basis) == {"W", "G", "A", "I"}, basis
    for letter, row in basis.items():
        path = ROOT / row["file"]
        assert path.is_file(), f"{letter}: {row['file']} does not exist"
        assert round(_field(path, row["field"])) == row["value"], f"{letter}: {row['file']} {row['field']}"
        lowest = re.match(r"lowest of `([^`]+)` \(([\d,]+)–([\d,]+)\)", row["choice"])
        if lowest:
            files = sorted(glob.glob(str(ROOT / lowest.group(1))))
            values = sorted(round(_field(Path(f), row["field"])) for f in files)
            assert len(files) >= 2 and str(path) in files, f"{letter}: {row['file']} is not one of {lowest.group(1)}"
            assert (values[0], values[-1]) == (_number(lowest.group(2)), _number(lowest.group(3))), letter
            assert row["value"] == values[0], f"{letter}: the lowest of {lowest.group(1)} is {values[0]}"
        else:
            assert row["choice"] == "the one run", row["choice"]
    values = {row["value"] for row in basis.values()}
    assert divisors <= values, divisors  # and by the basis only
    sizing = _section(text, "Sizing basis") + _section(text, "The arithmetic")
    sizing += "\n".join(line for line in _section(text, "GPU workers").splitlines() if not line.startswith("|"))
    stated = re.findall(r"([\d,]+) (?:headlines|observations)/s", sizing)
    assert stated and {_number(n) for n in stated} <= values, stated
    # A measured aggregator rate quoted anywhere is one a stream benchmark recorded.
    cores = {
        round(_field(Path(f), "core.events_per_s")) for f in glob.glob(str(ROOT / "bench/results/stream-cpu*.json"))
    }
    quoted = {_number(n) for n in re.findall(r"([\d,]+) observations/s", text)}
    assert quoted <= cores, quoted - cores


def test_scaling_members_follow_from_the_slowest_member_and_an_even_split():
    """Faust splits the raw partitions evenly over the group's members whatever their speed: the 10M/day row
    must size on the slowest member (a CPU worker, its lowest recorded rate) and give every member a share it
    keeps up with, also after losing one."""
    text = SCALING.read_text()
    w = min(
        round(_field(Path(f), "end_to_end.while_producing.items_per_s"))
        for f in glob.glob(str(ROOT / "bench" / "results" / "stream-cpu*.json"))
    )
    peak = 10 * 10_000_000 / 86_400
    row = next(line for line in text.splitlines() if re.match(r"\| [^|]*⌈peak [÷/] [\d,]+⌉", line))
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    divisor = _number(re.search(r"⌈peak [÷/] ([\d,]+)⌉", cells[0]).group(1))
    members = int(re.search(r"\*\*(\d+)\*\*", cells[3]).group(1))
    spare = int(re.search(r"(?i)run \*{0,2}(\d+)", cells[3]).group(1))
    partitions = 12
    assert divisor == w, f"sized on {divisor}/s; the slowest recorded CPU worker did {w}/s"
    assert members == math.ceil(peak / w)
    for m in (members, spare, spare - 1):
        assert peak * math.ceil(partitions / m) / partitions <= w, f"{m} members: the busiest one falls behind"
    assert "plus the (CPU) aggregating worker" not in text  # the CPU member would get half the peak


# ---- the example env files, the secrets each container gets, the Grafana password guard ---------------------

ASSIGNMENT = re.compile(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)")


def example_assignments(name: str, deploy: Path = DEPLOY) -> dict[str, tuple[str, bool]]:
    """Every ``NAME=value`` line of deploy/<name>: NAME -> (value, set as shipped). Commented ones (``# NAME=value``,
    to uncomment when needed: Kafka SASL) count too, with False: the file sets them once a user does."""
    out = {}
    for line in (deploy / name).read_text().splitlines():
        m = ASSIGNMENT.fullmatch(line.strip())
        if m:
            out[m.group(2)] = (m.group(3), m.group(1) is None)
    return out


def example_values(name: str) -> dict[str, str]:
    return {k: v for k, (v, shipped) in example_assignments(name).items() if shipped}


def test_example_env_files_ship_no_token_or_password_value():
    """A value in an example file gets copied unchanged and guards nothing: every token and password is empty
    (commented ones too: uncommented, they would be copied as they are), and finsent's settings take the copied
    files (empty = unset) without error."""
    from finsent.settings import Settings

    examples = sorted(p.name for p in DEPLOY.glob("*.env.example"))
    assert "grafana.env.example" in examples and len(examples) > 2, examples
    for name in examples:
        secrets = {k: v for k, (v, _) in example_assignments(name).items() if re.search(r"TOKEN|PASSWORD|SECRET", k)}
        assert secrets and not any(secrets.values()), f"{name}: {sorted(k for k, v in secrets.items() if v)}"
        assert "secrets.token_urlsafe" in (DEPLOY / name).read_text()  # how to make one
    s = Settings(**_nested({k: v for name in examples for k, v in example_values(name).items()}))
    assert s.receiver.token is None and s.receiver.read_token is None and s.web.token is None
    assert s.services.alertmanager_password is None and s.kafka.sasl_password is None


# The FINSENT_* secrets each finsent command reads (finsent/settings.py's tokens and passwords, and their users):
# every command that talks to Kafka, its SASL settings (finsent/kafka.py); the receiver its write and read tokens
# (alerts/receiver.py, receiver_state.py); the API its own token and the receiver's two, which it sends on the
# analyst's behalf (web/guard.py, web/cases.py); the Alertmanager config job the receiver's write token and
# Alertmanager's password (alerts/config.py), and no Kafka. `finsent grafana publish` (FINSENT_GRAFANA__*) runs in
# no container. A container gets these and nothing more.
KAFKA_SASL = frozenset(
    {
        "FINSENT_KAFKA__SECURITY_PROTOCOL",
        "FINSENT_KAFKA__SASL_MECHANISM",
        "FINSENT_KAFKA__SASL_USERNAME",
        "FINSENT_KAFKA__SASL_PASSWORD",
    }
)
RECEIVER_TOKENS = frozenset({"FINSENT_RECEIVER__TOKEN", "FINSENT_RECEIVER__READ_TOKEN"})
SECRETS_BY_COMMAND = {
    "topics": KAFKA_SASL,
    "ingest": KAFKA_SASL,
    "worker": KAFKA_SASL,
    "receiver": KAFKA_SASL | RECEIVER_TOKENS,
    "serve": KAFKA_SASL | RECEIVER_TOKENS | {"FINSENT_WEB__TOKEN"},
    "receiver alertmanager-config": frozenset({"FINSENT_RECEIVER__TOKEN", "FINSENT_SERVICES__ALERTMANAGER_PASSWORD"}),
}
SECRET_NAME = "finsent-secrets"


def finsent_command(argv: list[str]) -> str:
    """The (sub)command a container runs: its leading words, e.g. "receiver alertmanager-config", "worker"."""
    words = []
    for arg in argv:
        if not re.fullmatch(r"[a-z][a-z-]*", arg):
            break
        words.append(arg)
    return " ".join(words)


def secret_env_files(deploy: Path) -> list[str]:
    """The env files the Kubernetes Secret is made from: the `kubectl create secret` line of k8s/config.yaml."""
    return re.findall(r"--from-env-file=deploy/(\S+)", (deploy / "k8s" / "config.yaml").read_text())


def secrets_received(deploy: Path = DEPLOY) -> dict[str, tuple[str, set[str]]]:
    """Where each finsent container runs -> (its command, the FINSENT_* variables it gets from the secret files):
    compose's services through their env_file lists, the Kubernetes Deployments and Jobs (base and GPU overlay)
    through envFrom secretRef (the whole Secret) or env secretKeyRef (one key). Secret keys come from the committed
    examples of the env files, commented ones included (set once uncommented)."""
    out: dict[str, tuple[str, set[str]]] = {}
    doc = yaml.safe_load((deploy / "compose.yaml").read_text())
    for name, svc in doc["services"].items():
        if not interpolate(svc["image"]).startswith("finsent:"):
            continue
        files = [f if isinstance(f, str) else f["path"] for f in svc.get("env_file", [])]
        got = {k for f in files for k in example_assignments(f"{f}.example", deploy) if k.startswith("FINSENT_")}
        out[f"compose {name}"] = (finsent_command(svc["command"]), got)
    in_secret = {k: v for f in secret_env_files(deploy) for k, v in example_assignments(f"{f}.example", deploy).items()}
    for folder in K8S_DIRS:
        for path in sorted((deploy / folder).glob("*.yaml")):
            for d in yaml.safe_load_all(path.read_text()):
                if not d or d["kind"] not in ("Deployment", "Job"):
                    continue
                for c in d["spec"]["template"]["spec"]["containers"]:
                    if not c["image"].startswith("finsent:"):
                        continue
                    where = f"{folder}/{path.name} {d['metadata']['name']}"
                    got = set()
                    for source in c.get("envFrom", []):
                        if "secretRef" in source:
                            assert source["secretRef"]["name"] == SECRET_NAME, where
                            got |= {k for k in in_secret if k.startswith("FINSENT_")}
                    for e in c.get("env", []):
                        ref = e.get("valueFrom", {}).get("secretKeyRef")
                        if ref is None:
                            continue
                        assert ref["name"] == SECRET_NAME and ref["key"] == e["name"], (where, e)
                        assert ref["key"] in in_secret, (
                            f"{where}: {ref['key']} is in none of {secret_env_files(deploy)}"
                        )
                        if not in_secret[ref["key"]][1]:  # commented in its file: absent from the Secret as shipped
                            assert ref.get("optional") is True, (
                                f"{where}: {ref['key']} would keep the pod from starting"
                            )
                        got.add(e["name"])
                    out[where] = (finsent_command(c["args"]), got)
    return out


def test_each_finsent_container_gets_only_the_secrets_its_command_uses(tmp_path):
    """Least privilege: ingest or a worker that is compromised must not hold the receiver's write token, the API's
    token or Alertmanager's password. In every topology each finsent container gets exactly the secret variables
    its command reads (SECRETS_BY_COMMAND): none it never uses, and none it needs missing (Kafka SASL included)."""
    received = secrets_received()
    compose_services = {where.removeprefix("compose ") for where in received if where.startswith("compose ")}
    assert compose_services == FINSENT_SERVICES
    assert {cmd for where, (cmd, _) in received.items() if where.startswith("compose ")} == set(SECRETS_BY_COMMAND)
    k8s = {where.split()[-1] for where in received if where.startswith("k8s")}
    assert {"finsent-topic-init", "finsent-ingest", "finsent-worker", "finsent-worker-aggregator"} <= k8s
    assert {"finsent-worker-gpu", "finsent-receiver", "finsent-api"} <= k8s
    wrong = [
        f"{where} ({cmd}): extra {sorted(got - SECRETS_BY_COMMAND[cmd])}, missing {sorted(SECRETS_BY_COMMAND[cmd] - got)}"
        for where, (cmd, got) in received.items()
        if got != SECRETS_BY_COMMAND[cmd]
    ]
    assert not wrong, "\n".join(wrong)
    # Every example file is read by some compose service (or is Grafana's), and the Secret is made from them alone.
    listed = {f for svc in compose()["services"].values() for f in svc.get("env_file", [])}
    assert {p.name.removesuffix(".example") for p in DEPLOY.glob("*.env.example")} == listed
    assert set(secret_env_files(DEPLOY)) <= listed
    # deploy/README.md gives the same command, and kubectl really builds that Secret from the files (all set).
    command = next(
        line.lstrip("# ").strip()
        for line in (DEPLOY / "k8s" / "config.yaml").read_text().splitlines()
        if "create secret" in line
    )
    assert command in (DEPLOY / "README.md").read_text()
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # kustomize() skips the tests that need it; the keys above were read from the examples
    for name in secret_env_files(DEPLOY):
        lines = (DEPLOY / f"{name}.example").read_text().splitlines()
        (tmp_path / name).write_text("\n".join(re.sub(r"^#\s*(?=[A-Z][A-Z0-9_]*=)", "", s) for s in lines) + "\n")
    argv = command.replace("deploy/", f"{tmp_path}/").split()
    assert argv[:2] == ["kubectl", "-n"]
    built = subprocess.run(
        [kubectl, *argv[1:], "--dry-run=client", "-o", "yaml"], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    secret = yaml.safe_load(built.stdout)
    assert secret["metadata"]["name"] == SECRET_NAME
    expected = {k for f in secret_env_files(DEPLOY) for k in example_assignments(f"{f}.example")}
    assert set(secret["data"]) == expected


def test_grafana_refuses_to_start_without_a_real_admin_password(tmp_path):
    """Grafana falls back to admin/admin when GF_SECURITY_ADMIN_PASSWORD is empty: compose's entrypoint stops it
    first, with one line; a real password goes on to Grafana's own /run.sh."""
    grafana = compose()["services"]["grafana"]
    assert "entrypoint" in grafana, "compose starts Grafana with whatever grafana.env holds, admin/admin if empty"
    shell, flag, script = grafana["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c") and "exec /run.sh" in script
    script = script.replace("$$", "$").replace("exec /run.sh", "echo started")  # compose's escaping; no Grafana here
    env = {"PATH": "/usr/bin:/bin"}
    for bad in ("", "change-me", "Change-Me", "changeme"):
        run = subprocess.run(
            [shell, flag, script], env={**env, "GF_SECURITY_ADMIN_PASSWORD": bad}, capture_output=True, text=True
        )
        assert run.returncode != 0 and "started" not in run.stdout, bad
        assert len(run.stderr.strip().splitlines()) == 1 and "GF_SECURITY_ADMIN_PASSWORD" in run.stderr, run.stderr
    run = subprocess.run(
        [shell, flag, script], env={**env, "GF_SECURITY_ADMIN_PASSWORD": "kX3-real"}, capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.strip() == "started", run.stderr
