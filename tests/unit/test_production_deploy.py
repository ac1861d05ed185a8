"""deploy/production: the compose file and the Kubernetes manifests hang together.

No Docker engine or cluster runs here, so these are static checks, but each one is a
mistake that would otherwise surface only at ``docker compose up`` or ``kubectl apply``:
every climastream command parses with the real CLI, every config file it is given is
mounted and loads with the real loader, every secret it reads is declared and documented,
every ConfigMap/Secret key a pod uses is generated, selectors match their pods, and the
image installs every package.
"""

from __future__ import annotations

import re
import tomllib
from collections import ChainMap
from pathlib import Path
from typing import Any

import pytest
import yaml

from climastream.cli import build_parser

PROD = Path(__file__).resolve().parents[2] / "deploy" / "production"
SECRETS_README = (PROD / "secrets" / "README.md").read_text()


def _parses(args: list[str]) -> Any:
    try:
        return build_parser().parse_args(args)
    except SystemExit:  # argparse reports the bad option on stderr
        pytest.fail(f"climastream {' '.join(args)} does not parse")


def _load(name: str, path: Path) -> None:
    """Load a config file with the loader its command uses (raises on any error)."""
    if name == "stream.yaml":
        from stream.config import StreamConfig

        StreamConfig.load(path)
    elif name == "sink.yaml":
        from sinks.config import load_config

        load_config(path)
    elif name == "alerting.yaml":
        _load_alerting(path)
    else:
        raise AssertionError(f"no loader for {name}")


def _alerting_secrets(path: Path) -> set[str]:
    """The secret files the notifier's config reads (its ``*_file`` keys)."""
    config = yaml.safe_load(path.read_text())
    paths = {config["smtp"]["password_file"]} if "password_file" in config["smtp"] else set()
    return paths | {hook["secret_file"] for hook in config["webhooks"] if "secret_file" in hook}


def _load_alerting(path: Path) -> None:
    """The real loader, with each secret file it names stood in for by a file here."""
    import tempfile

    from sinks.notify.config import load_config as load_notify

    with tempfile.TemporaryDirectory() as tmp:
        text = path.read_text()
        for index, secret in enumerate(sorted(_alerting_secrets(path))):
            (Path(tmp) / f"secret-{index}").write_text("not the real one\n")
            text = text.replace(secret, f"{tmp}/secret-{index}")
        (Path(tmp) / path.name).write_text(text)
        config = load_notify(Path(tmp) / path.name)
    assert config.smtp is not None
    assert config.smtp.password is not None
    assert config.smtp.password.get_secret_value() == "not the real one"


# ------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((PROD / "compose.yaml").read_text())


def _climastream_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("climastream")}


def _volume(entry: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; source "" for an anonymous volume."""
    parts = entry.split(":")
    return ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def test_compose_runs_every_cloud_service() -> None:
    commands = {tuple(s["command"][:2]) for s in _climastream_services().values()}
    assert {
        ("stream", "worker"),
        ("alerts", "engine"),
        ("alerts", "notify"),
        ("sink", "run"),
        ("sink", "init"),
        ("console", "--host"),
    } <= commands


@pytest.mark.parametrize("service", sorted(_climastream_services()))
def test_compose_service_commands_parse_and_their_files_exist(service: str) -> None:
    compose = _compose()
    spec = compose["services"][service]
    args = _parses([str(a) for a in spec["command"]])
    mounts = {}
    for volume in spec.get("volumes", []):
        source, target = _volume(volume)
        if source.startswith("."):
            assert (PROD / source).exists(), f"{service}: {source} is not in the repository"
            mounts[target] = PROD / source
    secrets = {f"/run/secrets/{name}" for name in spec.get("secrets", [])}
    for name in spec.get("secrets", []):
        declared = compose["secrets"][name]["file"]
        assert declared.startswith("./secrets/"), declared
        assert f"`{declared.removeprefix('./secrets/')}`" in SECRETS_README, declared
    config = getattr(args, "config", None)
    if config is not None:
        config = str(config)
        assert config in mounts or config in secrets, f"{service}: {config} is not mounted"
        if config in mounts:
            _load(Path(config).name, mounts[config])
            if Path(config).name == "alerting.yaml":
                missing = _alerting_secrets(mounts[config]) - secrets
                assert not missing, f"{service}: {missing} are not among its secrets"
    env = spec.get("environment", {})
    for key, value in env.items():
        if key.endswith("_FILE"):
            assert value in secrets, f"{service}: {key}={value} is not one of its secrets"
        if key == "CLIMASTREAM_STREAM_CONFIG":
            assert value in mounts
            _load("stream.yaml", mounts[value])
    # a metrics port only helps if it listens beyond the container's loopback
    if getattr(args, "metrics_port", None):
        assert env.get("CLIMASTREAM_METRICS_HOST") == "0.0.0.0"


def test_compose_sink_token_file_is_the_mounted_secret() -> None:
    from sinks.config import load_config

    sink = _climastream_services()["sink"]
    token_file = load_config(PROD / "config" / "sink.yaml").influx.token_file
    assert str(token_file) in {f"/run/secrets/{s}" for s in sink["secrets"]}


def test_grafana_gets_the_dashboards_at_the_provisioned_path() -> None:
    grafana = _compose()["services"]["grafana"]
    provider = yaml.safe_load(
        (PROD.parent / "grafana/provisioning/dashboards/climastream.yaml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert (PROD / targets[path]).resolve() == (PROD.parent / "grafana/dashboards").resolve()
    assert any((PROD.parent / "grafana/dashboards").glob("*.json"))
    assert (
        "$__file{/run/secrets/influx-token}"
        in (PROD / "config/grafana-datasource.yaml").read_text()
    )


# ------------------------------------------------------------------------- kubernetes


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((PROD / "kustomization.yaml").read_text())


def _resources() -> list[dict[str, Any]]:
    docs = []
    for name in _kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((PROD / name).read_text()) if d]
    return docs


def _generated(kind: str) -> dict[str, set[str]]:
    """Generator name -> the keys it holds; every file it reads must exist."""
    out: dict[str, set[str]] = {}
    for gen in _kustomization()[kind]:
        keys = set()
        for entry in gen.get("literals", []):
            keys.add(entry.split("=", 1)[0])
        for entry in gen.get("files", []):
            key, _, path = entry.rpartition("=")
            key = key or Path(path).name
            if kind == "secretGenerator":
                assert path.startswith("secrets/")
                assert f"`{Path(path).name}`" in SECRETS_README, path
            else:
                assert (PROD / path).is_file(), path
            keys.add(key)
        out[gen["name"]] = keys
    return out


def _literals(name: str) -> dict[str, str]:
    """The literal entries of the ConfigMap generator ``name``."""
    (gen,) = [g for g in _kustomization()["configMapGenerator"] if g["name"] == name]
    return dict(entry.split("=", 1) for entry in gen.get("literals", []))


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _resources() if d["kind"] in ("Deployment", "StatefulSet")]


def test_kubernetes_resources_are_all_listed_and_parse() -> None:
    listed = {(PROD / r).resolve() for r in _kustomization()["resources"]}
    assert listed == {p.resolve() for p in (PROD / "k8s").glob("*.yaml")}
    components = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for w in _workloads()
    }
    assert components == {"stream-worker", "alert-engine", "notifier", "sink", "console"}


@pytest.mark.parametrize(
    "workload", _workloads(), ids=lambda w: f"{w['kind']}/{w['metadata']['name']}"
)
def test_kubernetes_workload_is_consistent(workload: dict[str, Any]) -> None:
    config_maps = _generated("configMapGenerator")
    secrets = _generated("secretGenerator")
    spec = workload["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    volumes: dict[str, set[str] | None] = {name: None for name in claims}  # files it provides
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            source, keys = volume["configMap"]["name"], config_maps
        else:
            source, keys = volume["secret"]["secretName"], secrets
        assert source in keys, f"{source} is not generated"
        items = volume.get("configMap", volume.get("secret", {})).get("items")
        for item in items or []:
            assert item["key"] in keys[source], f"{source} has no key {item['key']}"
        volumes[volume["name"]] = {i["path"] for i in items} if items else keys[source]
    for container in pod.get("initContainers", []) + pod["containers"]:
        args = _parses([str(a) for a in container["args"]])
        for env_from in container.get("envFrom", []):
            assert env_from["configMapRef"]["name"] in config_maps
        files: dict[str, str] = {}  # path in the container -> file name in its source
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"no volume {mount['name']}"
            for name in volumes[mount["name"]] or ():
                files[f"{mount['mountPath']}/{name}"] = name
        paths = [str(args.config)] if getattr(args, "config", None) else []
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        paths += [v for k, v in env.items() if k.endswith("_FILE") or k.endswith("_CONFIG")]
        for path in paths:
            assert path in files, f"{container['name']}: {path} is not mounted"
            if path.endswith(".yaml") and files[path] in config_maps["climastream-config"]:
                _load(files[path], PROD / "config" / files[path])
                if files[path] == "alerting.yaml":
                    for secret in _alerting_secrets(PROD / "config" / files[path]):
                        assert secret in files, f"{container['name']}: {secret} is not mounted"
        if getattr(args, "metrics_port", None):
            from_maps = [_literals(e["configMapRef"]["name"]) for e in container["envFrom"]]
            # a container's env wins over envFrom, a later envFrom over an earlier one
            seen = ChainMap(env, *reversed(from_maps))
            assert seen.get("CLIMASTREAM_METRICS_HOST") == "0.0.0.0"
            annotations = spec["template"]["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/port") == str(args.metrics_port)


def test_kubernetes_sink_metrics_and_token_match_its_config() -> None:
    from sinks.config import load_config

    config = load_config(PROD / "config" / "sink.yaml")
    (sink,) = [w for w in _workloads() if w["metadata"]["name"] == "sink"]
    template = sink["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics.port)
    assert config.metrics.host == "0.0.0.0"
    mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
    assert str(Path(str(config.influx.token_file)).parent) in mounts


def test_kubernetes_services_select_a_workload_and_name_its_port() -> None:
    services = [d for d in _resources() if d["kind"] == "Service"]
    assert services
    for service in services:
        (match,) = [
            w
            for w in _workloads()
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {
            p["name"]
            for c in match["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


# ------------------------------------------------------------------------- image


def test_the_image_copies_every_package_and_installs_the_cloud_extras() -> None:
    dockerfile = (PROD / "Dockerfile").read_text()
    pyproject = tomllib.loads((PROD.parents[1] / "pyproject.toml").read_text())
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, re.M))
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied
    (extras,) = re.findall(r'pip install "\.\[([\w,]+)\]"', dockerfile)
    assert set(extras.split(",")) == {"stream", "sinks", "console"}
    assert set(extras.split(",")) <= set(pyproject["project"]["optional-dependencies"])


def _image_user() -> tuple[int, int]:
    """The uid and gid the image runs as: its last USER, which must be numeric."""
    dockerfile = (PROD / "Dockerfile").read_text()
    (uid,) = re.findall(r"useradd [^\n]*--uid (\d+)", dockerfile)
    (gid,) = re.findall(r"groupadd [^\n]*--gid (\d+)", dockerfile)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)[-1]
    # runAsNonRoot can only verify a numeric user: with a name the kubelet refuses the
    # pod ("image has non-numeric user ... cannot verify user is non-root")
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user} is not numeric uid:gid"
    assert user == f"{uid}:{gid}", f"USER {user} is not the user the image creates"
    assert int(uid) != 0
    return int(uid), int(gid)


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    assert _image_user() == (10001, 10001)


def _image_env() -> dict[str, str]:
    """The environment the image's ENV instructions set."""
    text = (PROD / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        env.update(pair.split("=", 1) for pair in line.split())
    return env


#: Apache Kafka's default group.min.session.timeout.ms: a consumer-group join with a
#: shorter session is refused (INVALID_SESSION_TIMEOUT), and aiokafka gives up
KAFKA_MIN_SESSION_TIMEOUT_S = 6.0


def _joins_kafka_groups(env: Any, name: str) -> None:
    """The Faust apps started with ``env`` join a consumer group Kafka accepts."""
    from climastream.topics import Durability
    from stream.app import cluster_settings, session_timeout_from_env

    faust = cluster_settings(Durability(), session_timeout_from_env(env))
    assert faust["broker_session_timeout"] >= KAFKA_MIN_SESSION_TIMEOUT_S, name
    assert faust["broker_heartbeat_interval"] <= faust["broker_session_timeout"] / 3, name


def test_the_image_joins_consumer_groups_apache_kafka_accepts() -> None:
    _joins_kafka_groups(_image_env(), "image")
    for name, spec in _climastream_services().items():
        env = {**_image_env(), **{k: str(v) for k, v in spec.get("environment", {}).items()}}
        _joins_kafka_groups(env, name)


def test_the_image_defaults_to_three_replicas_two_in_sync() -> None:
    """A production cluster: a topic survives one broker, and so does every acks=all write."""
    from climastream.topics import Durability

    assert Durability.from_env(_image_env()) == Durability(3, 2)


@pytest.mark.parametrize(
    "workload", _workloads(), ids=lambda w: f"{w['kind']}/{w['metadata']['name']}"
)
def test_kubernetes_pods_run_as_the_image_user(workload: dict[str, Any]) -> None:
    uid, gid = _image_user()
    context = workload["spec"]["template"]["spec"]["securityContext"]
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser") == uid
    assert context.get("runAsGroup") == gid
    if workload["spec"].get("volumeClaimTemplates"):
        # the volume is written: its files must belong to the pod's group
        assert context.get("fsGroup") == gid


#: compose services that read their secrets as root (InfluxDB's entrypoint, before it
#: steps down to its own user); every other service that mounts one names its ``user``
ROOT_READERS = {"influxdb"}


def _secret_owners() -> dict[str, int]:
    """secret file -> the uid secrets/README.md says must own it (its owner column)."""
    rows = re.findall(r"^\| `([\w-]+)` \|.*\| `(\d+)` \|$", SECRETS_README, re.M)
    return {name: int(uid) for name, uid in rows}


def test_compose_services_run_as_the_image_user() -> None:
    uid, gid = _image_user()
    for name, spec in _climastream_services().items():
        assert spec.get("user") == f"{uid}:{gid}", name


def test_compose_secrets_are_owned_by_the_one_uid_that_reads_them() -> None:
    """Compose bind-mounts file secrets with their host owner and mode (0400 here)."""
    compose = _compose()
    owners = _secret_owners()
    readers: dict[str, set[int]] = {name: set() for name in compose["secrets"]}
    for service, spec in compose["services"].items():
        for entry in spec.get("secrets", []):
            source = entry if isinstance(entry, str) else entry["source"]
            if service in ROOT_READERS:
                readers[source].add(0)
            else:
                assert "user" in spec, f"{service} reads secrets but does not say as whom"
                readers[source].add(int(str(spec["user"]).split(":")[0]))
    commands = re.search(r"```sh\n(.*?)```", SECRETS_README, re.S)
    assert commands is not None
    script = commands.group(1)

    def lines(start: str) -> list[str]:
        return [line for line in script.splitlines() if line.startswith(start)]

    for secret, uids in readers.items():
        file = Path(compose["secrets"][secret]["file"]).name
        non_root = uids - {0}
        assert len(non_root) <= 1, f"{secret} is read by uids {sorted(uids)}: give each a copy"
        expected = non_root.pop() if non_root else 0
        assert owners.get(file) == expected, f"secrets/README.md: {file} belongs to {expected}"
        assert any(file in line.split()[2:] for line in lines("chmod 0400")), f"{file}: mode"
        assert any(file in line.split()[3:] for line in lines(f"sudo chown {expected}:")), file
    assert lines("chmod 0700 .")


# ------------------------------------------------------------------------- topics

#: commands that do not talk to Kafka (everything else consumes or produces)
KAFKA_FREE = {("sink", "init"), ("topics", "create")}


def test_compose_creates_the_topics_before_any_kafka_client() -> None:
    """Else a client's first request auto-creates a topic with the broker's default count."""
    services = _compose()["services"]
    init = services["topics-init"]
    assert init["command"][:2] == ["topics", "create"]
    assert init["restart"] == "no"
    assert init["depends_on"]["kafka"] == {"condition": "service_healthy"}
    for name, spec in _climastream_services().items():
        if tuple(spec["command"][:2]) in KAFKA_FREE:
            continue
        waits = spec.get("depends_on", {}).get("topics-init")
        assert waits == {"condition": "service_completed_successfully"}, name


def _kafka_brokers() -> int:
    return sum(
        1 for spec in _compose()["services"].values() if "apache/kafka" in spec.get("image", "")
    )


def test_compose_topics_have_no_more_replicas_than_its_brokers() -> None:
    """Else topics-init fails (InvalidReplicationFactor) and no service starts."""
    from climastream.topics import Durability

    brokers = _kafka_brokers()
    assert brokers == 1
    for name, spec in _climastream_services().items():
        env = {**_image_env(), **{k: str(v) for k, v in spec.get("environment", {}).items()}}
        durability = Durability.from_env(env)
        assert durability.replication_factor <= brokers, name
    kafka = _compose()["services"]["kafka"]["environment"]
    assert int(kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) <= brokers


def test_compose_kafka_advertises_to_outside_clients_a_name_they_resolve() -> None:
    """A client connects to the advertised address: a gateway outside compose's network
    cannot resolve a service name, so it could bootstrap but never send."""
    compose = _compose()
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    listeners = dict(
        re.fullmatch(r"(\w+)://(.*)", entry).groups()  # type: ignore[union-attr]
        for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    published = {str(port).split(":")[-1] for port in kafka["ports"]}
    assert published, "gateways reach the broker from outside"
    outside = [
        (name, address)
        for name, address in listeners.items()
        if address.rsplit(":", 1)[1] in published
    ]
    assert outside, f"no advertised listener on a published port {published}"
    for name, address in outside:
        host = address.rsplit(":", 1)[0]
        assert host not in compose["services"], f"{name} advertises the service name {host}"
        assert host not in ("localhost", "127.0.0.1"), f"{name} advertises {host}"
        # the operator must say it: no default that silently points gateways elsewhere
        assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", host), f"{name}: {host} is not required"
    # the services inside compose's network use the internal listener
    bootstrap = _climastream_services()["stream-worker"]["environment"]
    assert bootstrap["CLIMASTREAM_KAFKA_BOOTSTRAP"] == listeners["PLAINTEXT"]


def test_compose_kafka_does_not_auto_create_topics() -> None:
    """A client naming a missing topic must not create it with the broker's defaults."""
    kafka = _compose()["services"]["kafka"]["environment"]
    assert str(kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"


@pytest.mark.parametrize(
    "workload", _workloads(), ids=lambda w: f"{w['kind']}/{w['metadata']['name']}"
)
def test_kubernetes_pods_create_the_topics_first(workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    first = pod.get("initContainers", [{}])[0]
    assert first.get("args", [])[:2] == ["topics", "create"]
    from_maps = [_literals(e["configMapRef"]["name"]) for e in first["envFrom"]]
    env = ChainMap(*reversed(from_maps))
    assert env.get("CLIMASTREAM_KAFKA_BOOTSTRAP")


@pytest.mark.parametrize(
    "workload", _workloads(), ids=lambda w: f"{w['kind']}/{w['metadata']['name']}"
)
def test_kubernetes_containers_get_the_production_kafka_settings(workload: dict[str, Any]) -> None:
    """Every container that may create a topic (topics create, the stream workers' and the
    alert engine's internal topics) sees replication factor 3, min.insync.replicas 2, and
    a Faust app in it would join its group with a session Kafka accepts."""
    from climastream.topics import Durability

    pod = workload["spec"]["template"]["spec"]
    for container in pod.get("initContainers", []) + pod["containers"]:
        from_maps = [_literals(e["configMapRef"]["name"]) for e in container.get("envFrom", [])]
        own = {e["name"]: e["value"] for e in container.get("env", [])}
        env = ChainMap(own, *reversed(from_maps), _image_env())
        assert Durability.from_env(env) == Durability(3, 2), container["name"]
        _joins_kafka_groups(env, container["name"])


# ------------------------------------------------------------------------- scaling


def test_compose_services_it_scales_share_no_volume() -> None:
    """Replicas of one service would share a named volume: Faust forbids a shared data dir."""
    text = (PROD / "compose.yaml").read_text()
    scaled = set(re.findall(r"--scale ([\w-]+)=\d+", text))
    assert "stream-worker" in scaled
    services = _compose()["services"]
    for name in scaled:
        for entry in services[name].get("volumes", []):
            source, _ = _volume(entry)
            assert source == "" or source.startswith("."), f"{name} shares {source}"
            if source.startswith("."):
                assert entry.endswith(":ro"), f"{name} replicas would write {source}"


def test_compose_stream_worker_data_dir_is_its_own_volume() -> None:
    worker = _compose()["services"]["stream-worker"]
    args = _parses([str(a) for a in worker["command"]])
    anonymous = [t for s, t in map(_volume, worker["volumes"]) if s == ""]
    assert any(Path(args.data_dir).is_relative_to(t) for t in anonymous), args.data_dir


def test_compose_named_volumes_have_one_service_each() -> None:
    users: dict[str, list[str]] = {}
    for name, spec in _compose()["services"].items():
        for entry in spec.get("volumes", []):
            source, _ = _volume(entry)
            if source and not source.startswith((".", "/")):
                users.setdefault(source, []).append(name)
    assert all(len(names) == 1 for names in users.values()), users
    assert set(users) == set(_compose()["volumes"]), "declared volumes that nothing mounts"
