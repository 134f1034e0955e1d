"""deploy/: what can be checked without a Docker engine or a Kubernetes cluster (neither runs here).

* compose.yaml: validated against the Compose Specification JSON schema (vendored, see
  tests/fixtures/schemas/README.md), plus the checks the schema cannot make: every depends_on target
  exists, every bind-mounted file exists in the repo, ports bind 127.0.0.1, images are pinned, no
  literal secrets, healthchecks and restart policies, GPU reservation, both Kafka profiles consistent;
* the Prometheus config: the real ``promtool check config`` with the rule files the compose file mounts;
  the Alertmanager config the compose job renders: the real ``amtool check-config``;
* the Dockerfile: hadolint;
* the Kubernetes manifests: kubernetes-validate --strict against the Kubernetes 1.31 schemas;
* Grafana provisioning and dashboard paths referenced by the compose file exist.
A negative control for each validator shows it rejects a broken file (none of these can pass vacuously).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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
    assert {"worker", "ingest", "receiver", "api", "alertmanager", "prometheus"} <= jobs
    worker_names = next(j for j in config["scrape_configs"] if j["job_name"] == "worker")["dns_sd_configs"][0]["names"]
    assert set(worker_names) == {"worker", "worker-aggregator", "worker-gpu"}  # every worker flavour is job="worker"
    config["scrape_configs"][0]["scrape_interval"] = "fifteen seconds"  # negative control
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(config))
    assert (
        subprocess.run(["promtool", "check", "config", str(tmp_path / "broken.yml")], capture_output=True).returncode
        != 0
    )


def test_the_alertmanager_config_the_compose_job_renders_passes_amtool(tmp_path):
    job = compose()["services"]["alertmanager-config"]
    out_dir, address = tmp_path / "am", job["command"][job["command"].index("--receiver-address") + 1]
    env = {
        "FINSENT_RECEIVER__TOKEN": "t0ken-from-env",
        "PATH": "/usr/bin:/bin",
        "FINSENT_PATHS__STATE_DIR": str(tmp_path),
    }
    run = subprocess.run(
        [sys.executable, "-m", "finsent.cli", *job["command"][:2], str(out_dir), "--receiver-address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rendered = (out_dir / "alertmanager.yml").read_text()
    assert "http://receiver:9184/alertmanager" in rendered and "t0ken-from-env" not in rendered
    assert (out_dir / "receiver-token").read_text() == "t0ken-from-env"
    amtool = shutil.which("amtool") or "/usr/bin/amtool"
    check = subprocess.run([amtool, "check-config", str(out_dir / "alertmanager.yml")], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    am = compose()["services"]["alertmanager"]
    assert f"--config.file={job['command'][2]}/alertmanager.yml" in am["command"]  # the volume path both use


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


def test_kubernetes_manifests_validate_strictly():
    import kubernetes_validate

    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    kinds = []
    for name in files:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            if doc:
                kubernetes_validate.validate(doc, "1.31.0", strict=True)
                kinds.append((doc["kind"], doc["metadata"]["name"]))
    assert {
        ("Deployment", "finsent-worker"),
        ("Deployment", "finsent-worker-gpu"),
        ("HorizontalPodAutoscaler", "finsent-worker"),
        ("Deployment", "finsent-worker-aggregator"),
        ("Job", "finsent-topic-init"),
    } <= set(kinds)
    workers = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "worker-gpu.yaml").read_text()) if d
    }
    limits = workers["finsent-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    settings = yaml.safe_load((DEPLOY / "k8s" / "config.yaml").read_text())["data"]
    hpa = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "worker.yaml").read_text())
        if d and d["kind"] == "HorizontalPodAutoscaler"
    )
    assert hpa["spec"]["maxReplicas"] + 1 == int(settings["FINSENT_TOPICS__RAW__PARTITIONS"])  # + the aggregator
    bad = yaml.safe_load((DEPLOY / "k8s" / "topic-init.yaml").read_text())
    bad["spec"]["template"]["spec"]["containers"][0]["argz"] = ["topics"]  # negative control
    with pytest.raises(Exception):  # noqa: B017 - the validator's own error types differ by version
        kubernetes_validate.validate(bad, "1.31.0", strict=True)


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
