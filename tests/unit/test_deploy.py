"""The files in deploy/ that run several gateways as one service.

No Docker engine or cluster is at hand where these tests run, so each file is
checked for what can go wrong without one: it parses, its parts point at each
other (labels, ports, volumes, secrets), and every FILESTORE_* variable it
sets is a setting filestore accepts, with values that load. A misspelt
setting would otherwise only show at the first deploy. The nginx config goes
through nginx's own parser (``nginx -t``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import fields
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from filestore.config import Settings
from filestore.crypto._files import check_private
from filestore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
NGINX_CONF = DEPLOY / "nginx.conf"

#: Every environment variable filestore reads as a setting.
SETTING_VARS = frozenset("FILESTORE_" + f.name.upper() for f in fields(Settings))
#: Sample values for the variables compose takes from deploy/.env.
COMPOSE_VARS = {
    "POSTGRES_PASSWORD": "sample-password",
    "S3_ACCESS_KEY_ID": "sample-key-id",
    "S3_SECRET_ACCESS_KEY": "sample-secret",
}
GATEWAYS = ("gateway1", "gateway2")
TEN_GIB = 10 << 30


# ------------------------------------------------------------ the checker
def unknown_settings(env: Mapping[str, object]) -> list[str]:
    """The FILESTORE_* names in ``env`` that are no filestore setting: the
    gateway would ignore them silently."""
    return sorted(k for k in env if k.startswith("FILESTORE_") and k not in SETTING_VARS)


def test_checker_flags_a_made_up_setting() -> None:
    """Negative control: the checker the other tests rely on catches a typo
    and leaves real settings and foreign variables alone."""
    sample = {"FILESTORE_NOT_A_SETTING": "1", "FILESTORE_PORT": "8080", "AWS_REGION": "x"}
    assert unknown_settings(sample) == ["FILESTORE_NOT_A_SETTING"]
    assert unknown_settings({"FILESTORE_S3_BUCKET": "b", "PATH": "/bin"}) == []


# -------------------------------------------------------------- Dockerfile
@cache
def dockerfile_instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) of every stage, continuation lines joined and
    comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        pending = ""
        instructions.append((word.upper(), rest.strip()))
    return tuple(instructions)


def dockerfile_args(word: str) -> list[str]:
    """Arguments of each ``word`` instruction of the last stage: the image that runs."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    return [args for w, args in instructions[last_from:] if w == word]


@cache
def dockerfile_env() -> dict[str, str]:
    """The image's ENV, as a container started from it sees it (unexpanded)."""
    env: dict[str, str] = {}
    for args in dockerfile_args("ENV"):
        parts = shlex.split(args)
        if "=" not in parts[0]:  # the legacy form: ENV NAME value
            env[parts[0]] = " ".join(parts[1:])
            continue
        for part in parts:
            name, _, value = part.partition("=")
            env[name] = value
    return env


def test_dockerfile_is_python_slim_and_installs_the_project() -> None:
    assert dockerfile_args("FROM") == ["python:3.11-slim"]
    assert any(
        re.search(r"pip install \.(\s|$)", a) for w, a in dockerfile_instructions() if w == "RUN"
    )
    # The build context is the repository root: what the build copies must be there.
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"


def test_dockerfile_builds_the_c_helper_and_ships_no_compiler() -> None:
    """The build stage has setup.py and gcc and fails without the helper
    (pip would otherwise go on without it); the image that runs has neither
    the compiler nor an apt-get of its own."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    build, run = instructions[:last_from], instructions[last_from:]
    copied = [s for w, a in build if w == "COPY" for s in shlex.split(a)[:-1]]
    assert "setup.py" in copied
    build_runs = " ".join(a for w, a in build if w == "RUN")
    assert re.search(r"apt-get install .*\bgcc\b", build_runs)
    check = "import filestore.storage._syncwrite"
    assert check in build_runs
    assert build_runs.index("pip install .") < build_runs.index(check)
    assert not any("gcc" in a for w, a in run if w == "RUN")


def test_dockerfile_runs_as_a_fixed_non_root_uid() -> None:
    users = dockerfile_args("USER")
    assert users, "no USER: the image would run as root"
    # The last USER is the one the container runs as.
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]}: want a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER {users[-1]}: gid"


def test_dockerfile_is_fit_for_a_read_only_root() -> None:
    env = dockerfile_env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env["FILESTORE_DATA_DIR"] in " ".join(dockerfile_args("VOLUME"))
    assert env["FILESTORE_HOST"] == "0.0.0.0"
    assert dockerfile_args("EXPOSE") == [env["FILESTORE_PORT"]] == ["8080"]
    assert json.loads(dockerfile_args("ENTRYPOINT")[-1]) == ["filestore"]
    assert json.loads(dockerfile_args("CMD")[-1]) == ["serve"]


def test_dockerfile_env_is_filestore_settings() -> None:
    env = dockerfile_env()
    assert unknown_settings(env) == []
    settings = Settings.load(env=env)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)


def healthcheck_snippet() -> str:
    """The Python code of the image's HEALTHCHECK."""
    (args,) = dockerfile_args("HEALTHCHECK")
    argv = json.loads(args[args.index("CMD") + len("CMD") :])
    assert argv[:2] == ["python", "-c"], "slim has no curl: the probe must use python"
    return str(argv[2])


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Failing(_Health):
    status = 503


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _run_probe(port: int) -> int:
    env = {**os.environ, "FILESTORE_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-c", healthcheck_snippet()], env=env, capture_output=True, timeout=10
    ).returncode


@pytest.mark.parametrize(
    ("health_server", "healthy"), [(_Health, True), (_Failing, False)], indirect=["health_server"]
)
def test_dockerfile_healthcheck_asks_healthz(health_server: int, healthy: bool) -> None:
    """The probe really requests /healthz on FILESTORE_PORT, and fails on an error status."""
    assert (_run_probe(health_server) == 0) is healthy


def test_dockerfile_healthcheck_fails_when_nothing_listens() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = int(server.server_address[1])
    server.server_close()
    assert _run_probe(port) != 0


# ------------------------------------------------------------------- YAML
def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.glob("*.yml"), *DEPLOY.glob("*.yaml"), *K8S.glob("*.yaml")])


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no document"
    assert all(isinstance(d, dict) for d in docs)


def test_there_are_k8s_manifests() -> None:
    kinds = {doc["kind"] for doc in k8s_docs()}
    assert {"Deployment", "Service", "Secret", "PodDisruptionBudget", "CronJob"} <= kinds


# ------------------------------------------------------------- Kubernetes
@cache
def k8s_docs() -> tuple[dict[str, Any], ...]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return tuple(docs)


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one manifest of ``kind`` (named ``name``, if given)."""
    found = [d for d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment_pod() -> dict[str, Any]:
    return dict(k8s("Deployment")["spec"]["template"])


def cronjob_pod() -> dict[str, Any]:
    return dict(k8s("CronJob")["spec"]["jobTemplate"]["spec"]["template"])


def gateway_container() -> dict[str, Any]:
    (container,) = deployment_pod()["spec"]["containers"]
    return dict(container)


def pod_specs() -> list[dict[str, Any]]:
    return [deployment_pod()["spec"], cronjob_pod()["spec"]]


def all_containers() -> list[dict[str, Any]]:
    return [
        c for spec in pod_specs() for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    for entry in container["ports"]:
        if port in (entry["containerPort"], entry.get("name")):
            return int(entry["containerPort"])
    raise AssertionError(f"port {port!r} is no port of container {container['name']}")


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The environment a container starts with: the image's ENV, then its
    envFrom ConfigMaps and Secrets, then its own env values."""
    env = dict(dockerfile_env())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(k8s("Secret", source["secretRef"]["name"])["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def test_k8s_documents_are_named() -> None:
    for doc in k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), f"a {doc['kind']} without a name"


def test_k8s_config_values_are_strings() -> None:
    """The API server refuses a ConfigMap or Secret with a number or boolean
    value (an unquoted 8080 or true)."""
    for doc in k8s_docs():
        values = doc.get("data") if doc["kind"] == "ConfigMap" else doc.get("stringData")
        for key, value in (values or {}).items():
            assert isinstance(value, str), f"{doc['metadata']['name']}: {key} is not a string"


def test_deployment_runs_two_replicas_of_its_own_pods() -> None:
    spec = k8s("Deployment")["spec"]
    assert spec["replicas"] >= 2
    assert selects(spec["selector"]["matchLabels"], deployment_pod()["metadata"]["labels"])


def test_deployment_probes_readyz_and_healthz_on_the_container_port() -> None:
    container = gateway_container()
    port = int(container_env(container)["FILESTORE_PORT"])
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    assert container_port(container, ready["port"]) == port
    assert container_port(container, live["port"]) == port


def test_pods_are_locked_down() -> None:
    for spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert int(spec["securityContext"]["runAsUser"]) > 0
        # The Service "filestore" would otherwise set FILESTORE_PORT=tcp://...
        assert spec["enableServiceLinks"] is False
    for container in all_containers():
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert container["resources"]["requests"], container["name"]
        assert container["resources"]["limits"], container["name"]


def _mounted_volume(spec: Mapping[str, Any], container: Mapping[str, Any], path: str) -> Any:
    """The pod volume whose mount in ``container`` holds ``path``."""
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            return volume
    raise AssertionError(f"{path} is on no volume of {container['name']}")


def test_each_pod_keeps_its_data_dir_in_an_emptydir() -> None:
    """The ratchet state lives in the data dir: never on a volume that outlives
    the pod, is shared or is backed up."""
    for spec in pod_specs():
        for container in spec["containers"]:
            data_dir = container_env(container)["FILESTORE_DATA_DIR"]
            volume = _mounted_volume(spec, container, data_dir)
            assert set(volume) == {"name", "emptyDir"}, volume


def test_key_files_are_on_mounted_volumes() -> None:
    for spec in pod_specs():
        for container in spec["containers"]:
            env = container_env(container)
            paths = [
                v for k, v in env.items() if k.startswith("FILESTORE_") and k.endswith("_FILE")
            ]
            assert env["FILESTORE_CLUSTER_SECRET_FILE"] in paths
            for path in paths:
                _mounted_volume(spec, container, path)


def install_keys_script(spec: Mapping[str, Any]) -> str:
    (init,) = [c for c in spec["initContainers"] if c["name"] == "install-keys"]
    assert init["command"][:2] == ["python", "-c"]
    return str(init["command"][2])


def test_install_keys_copies_every_key_owner_only(tmp_path: Path) -> None:
    """The init container turns the Secret's files (group-readable under
    fsGroup) into files filestore accepts, and may run again on a restart."""
    spec = deployment_pod()["spec"]
    script = install_keys_script(spec)
    assert install_keys_script(cronjob_pod()["spec"]) == script, "the two copies drifted"
    mount_paths = {m["name"]: m["mountPath"] for m in spec["initContainers"][0]["volumeMounts"]}
    (secret_volume,) = [v for v in spec["volumes"] if "secret" in v]
    keys = k8s("Secret", secret_volume["secret"]["secretName"])["stringData"]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name in keys:
        (src / name).write_bytes(f"value of {name}".encode())
        (src / name).chmod(0o440)
    script = script.replace(mount_paths[secret_volume["name"]], str(src))
    script = script.replace(mount_paths["keys"], str(dst))
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, timeout=10)
    assert sorted(p.name for p in dst.iterdir()) == sorted(keys)
    for name in keys:
        check_private(dst / name)
        assert stat.S_IMODE((dst / name).stat().st_mode) == 0o400
        assert (dst / name).read_bytes() == f"value of {name}".encode()
    # What filestore is told to read is what the init container wrote.
    env = container_env(gateway_container())
    for key in (
        "FILESTORE_CLUSTER_SECRET_FILE",
        "FILESTORE_LINK_KEY_FILE",
        "FILESTORE_SIGNING_KEY_FILE",
    ):
        assert PurePosixPath(env[key]).parent == PurePosixPath(mount_paths["keys"])
        assert PurePosixPath(env[key]).name in keys


def test_env_sources_exist() -> None:
    for spec in pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    k8s("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    k8s("Secret", source["secretRef"]["name"])
        for volume in spec["volumes"]:
            if "secret" in volume:
                k8s("Secret", volume["secret"]["secretName"])


def test_k8s_settings_are_filestore_settings_and_load() -> None:
    for container in [c for spec in pod_specs() for c in spec["containers"]]:
        env = container_env(container)
        assert unknown_settings(env) == [], container["name"]
        settings = Settings.load(env=env)
        assert settings.key_schedule == "ratchet"
        assert settings.storage == "s3"
        assert settings.database_dialect == "postgresql"
    # Secret keys that look like settings are settings too.
    for doc in k8s_docs():
        if doc["kind"] in ("Secret", "ConfigMap"):
            assert unknown_settings(doc.get("stringData") or doc.get("data") or {}) == []


def test_service_routes_to_the_gateway_port_and_is_the_join_peer() -> None:
    service = k8s("Service")
    container = gateway_container()
    assert selects(service["spec"]["selector"], deployment_pod()["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == 8080
    peers = Settings.load(env=container_env(container)).join_peers
    assert f"http://{service['metadata']['name']}:{port['port']}" in peers


def test_pdb_keeps_one_gateway() -> None:
    pdb = k8s("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert selects(pdb["selector"]["matchLabels"], deployment_pod()["metadata"]["labels"])


def test_cronjob_runs_filestore_purge_outside_the_service() -> None:
    pod = cronjob_pod()
    (container,) = pod["spec"]["containers"]
    entrypoint = json.loads(dockerfile_args("ENTRYPOINT")[-1])
    argv = [*container.get("command", entrypoint), *container.get("args", [])]
    assert argv == ["filestore", "purge"]
    assert not selects(k8s("Service")["spec"]["selector"], pod["metadata"]["labels"])
    assert not selects(
        k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]
    )


# ---------------------------------------------------------------- compose
_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, on every
    string of a parsed compose file."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if name in variables:
            return variables[name]
        if op and op.endswith("-"):
            return str(arg)
        raise AssertionError(f"compose needs ${{{name}}} ({arg or 'no default'})")

    return _INTERPOLATION.sub(substitute, value)


@cache
def compose() -> dict[str, Any]:
    return dict(interpolate(yaml.safe_load(COMPOSE.read_text()), COMPOSE_VARS))


def service(name: str) -> dict[str, Any]:
    return dict(compose()["services"][name])


def compose_env(name: str) -> dict[str, str]:
    raw = service(name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def gateway_env(name: str) -> dict[str, str]:
    """What a gateway container sees: the image's ENV under compose's."""
    return {**dockerfile_env(), **compose_env(name)}


def mounts(name: str) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, short or long syntax."""
    out = []
    for entry in service(name).get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry["source"], entry["target"]
        out.append((source, target))
    return out


def test_compose_has_the_services() -> None:
    services = compose()["services"]
    assert {*GATEWAYS, "postgres", "seaweedfs", "nginx"} <= set(services)
    assert service("postgres")["image"] == "postgres:15"
    seaweed = service("seaweedfs")
    assert seaweed["image"].startswith("chrislusf/seaweedfs")
    assert seaweed["command"][:2] == ["server", "-s3"]


def test_compose_builds_the_gateways_from_the_dockerfile() -> None:
    for name in GATEWAYS:
        build = service(name)["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_gateways_keep_separate_data_volumes() -> None:
    declared = set(compose()["volumes"])
    sources = []
    for name in GATEWAYS:
        data_dir = gateway_env(name)["FILESTORE_DATA_DIR"]
        (source,) = [s for s, t in mounts(name) if t == data_dir]
        assert source in declared, f"{name}: {source} is no named volume"
        sources.append(source)
    assert len(set(sources)) == len(sources), "the gateways share a data volume"
    shared = {s for s, _ in mounts(GATEWAYS[0])} & {s for s, _ in mounts(GATEWAYS[1])}
    assert not shared, f"the gateways share {shared}"


def test_compose_gateways_are_hardened_and_wait_for_postgres() -> None:
    for name in GATEWAYS:
        gateway = service(name)
        assert gateway["read_only"] is True
        assert "/tmp" in gateway["tmpfs"]
        assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
        test = gateway["healthcheck"]["test"]
        assert test[0] == "CMD" and "/healthz" in " ".join(test)
        compile(test[test.index("-c") + 1], f"{name} healthcheck", "exec")
    assert "healthcheck" in service("postgres")
    assert "healthcheck" in service("seaweedfs")


def test_compose_gateways_join_each_other() -> None:
    for name in GATEWAYS:
        settings = Settings.load(env=gateway_env(name))
        others = {f"http://{g}:{Settings.load(env=gateway_env(g)).port}" for g in GATEWAYS} - {
            f"http://{name}:{settings.port}"
        }
        assert set(settings.join_peers) == others


def test_compose_settings_are_filestore_settings_and_load() -> None:
    for name in compose()["services"]:
        assert unknown_settings(compose_env(name)) == [], name
    for name in GATEWAYS:
        env = gateway_env(name)
        settings = Settings.load(env=env)
        assert settings.key_schedule == "ratchet"
        assert settings.storage == "s3"
        assert settings.s3_endpoint_url == "http://seaweedfs:8333"
        assert settings.s3_addressing_style == "path"
        assert settings.database_url == (
            f"postgresql://filestore:{COMPOSE_VARS['POSTGRES_PASSWORD']}@postgres:5432/filestore"
        )


def test_the_settings_check_has_teeth() -> None:
    """Negative control for the load checks above: the same gateway settings
    without the cluster secret do not load."""
    env = {k: v for k, v in gateway_env("gateway1").items() if k != "FILESTORE_CLUSTER_SECRET_FILE"}
    with pytest.raises(ConfigError, match="CLUSTER_SECRET_FILE"):
        Settings.load(env=env)


def test_compose_key_files_are_compose_secrets() -> None:
    declared = set(compose()["secrets"])
    for name in GATEWAYS:
        env = gateway_env(name)
        targets = {}
        for entry in service(name)["secrets"]:
            source = entry if isinstance(entry, str) else entry["source"]
            target = source if isinstance(entry, str) else entry.get("target", source)
            assert source in declared
            targets[f"/run/secrets/{target}"] = source
        assert env["FILESTORE_CLUSTER_SECRET_FILE"] == "/run/secrets/cluster-secret"
        for key, value in env.items():
            if key.startswith("FILESTORE_") and key.endswith("_FILE"):
                assert value in targets, f"{name}: {key}={value} is no secret of the service"


# ------------------------------------------------------------------ nginx
_NGINX_TOKEN = re.compile(r"\"[^\"]*\"|'[^']*'|[{};]|[^\s{};]+")


def nginx_directives(text: str) -> list[tuple[tuple[str, ...], str, list[str]]]:
    """(enclosing block names, directive, arguments) for every directive."""
    text = re.sub(r"(?m)#.*$", "", text)
    out: list[tuple[tuple[str, ...], str, list[str]]] = []
    blocks: list[str] = []
    words: list[str] = []
    for token in _NGINX_TOKEN.findall(text):
        if token == ";":
            out.append((tuple(blocks), words[0], words[1:]))
            words = []
        elif token == "{":
            out.append((tuple(blocks), words[0], words[1:]))
            blocks.append(words[0])
            words = []
        elif token == "}":
            blocks.pop()
        else:
            words.append(token)
    assert not blocks and not words, "unbalanced nginx config"
    return out


def nginx_values(name: str) -> list[list[str]]:
    return [args for _, d, args in nginx_directives(NGINX_CONF.read_text()) if d == name]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text)
    assert match, text
    unit = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


def _bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", text.lower())
    assert match, text
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2)]


def test_nginx_streams_large_files() -> None:
    assert ["off"] in nginx_values("proxy_request_buffering")
    assert ["off"] in nginx_values("proxy_buffering")
    assert nginx_values("proxy_http_version") == [["1.1"]]
    ((limit,),) = nginx_values("client_max_body_size")
    assert limit == "0" or _bytes(limit) >= TEN_GIB
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        ((value,),) = nginx_values(name)
        assert _seconds(value) >= 600, f"{name} {value} cuts long transfers"
    headers = {args[0].lower(): args[1] for args in nginx_values("proxy_set_header")}
    assert headers["host"] == "$host"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"


def test_nginx_balances_the_compose_gateways() -> None:
    directives = nginx_directives(NGINX_CONF.read_text())
    servers = {
        args[0] for blocks, d, args in directives if d == "server" and blocks[-1:] == ("upstream",)
    }
    gateways = {f"{g}:{Settings.load(env=gateway_env(g)).port}" for g in GATEWAYS}
    assert servers == gateways
    assert ("./nginx.conf", "/etc/nginx/nginx.conf") in mounts("nginx")


def _nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.skip("no nginx binary (apt-get install -y nginx-light) to run `nginx -t`")
    return found


def nginx_test(text: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``text`` made runnable here: upstream hosts that only
    resolve inside compose become 127.0.0.1, and the paths under /tmp it
    writes (pid, temporary files) move to ``tmp``."""
    text = re.sub(r"(?m)^(\s*server\s+)[\w.-]+(:\d+)", r"\g<1>127.0.0.1\g<2>", text)
    text = text.replace("/tmp/", f"{tmp}/")
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    argv = [_nginx_binary(), "-t", "-q", "-p", f"{tmp}/", "-e", str(tmp / "error.log")]
    return subprocess.run([*argv, "-c", str(conf)], capture_output=True, text=True, timeout=30)


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    result = nginx_test(NGINX_CONF.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr


def test_nginx_check_rejects_a_broken_config(tmp_path: Path) -> None:
    """Negative control: the harness above really runs nginx's parser."""
    broken = NGINX_CONF.read_text().replace("proxy_buffering off;", "proxy_buffering sometimes;")
    assert broken != NGINX_CONF.read_text()
    result = nginx_test(broken, tmp_path)
    assert result.returncode != 0
    assert "proxy_buffering" in result.stderr


def test_nginx_never_forwards_the_key_hand_over() -> None:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    block = text[text.index("location ^~ /v1/cluster/") :]
    assert block.split("}")[0].strip().endswith("return 404;")
