"""deploy/ files checked offline: promtool on the Prometheus config and alert rules (with rule unit tests),
kubernetes-validate on the Indexed Job, and the systemd unit, Dockerfile and compose file against the repo.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.monitoring import DEPLOY, tool

PROM = DEPLOY / "prometheus"
needs_promtool = pytest.mark.skipif(
    tool("promtool") is None, reason="promtool is not installed (Debian package 'prometheus'; .ci/run installs it)"
)


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@needs_promtool
def test_alert_rules_check_and_unit_tests() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "alerts.yml").stdout
    # alerts_test.yml feeds series for a stalled and a finished shard, error ratios, a filling disk and
    # dead targets, and states exactly which alerts fire.
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml").stdout


@needs_promtool
def test_prometheus_configs(tmp_path: Path) -> None:
    promtool("check", "config", "prometheus.yml")
    # Debian's Prometheus build leaves out Kubernetes discovery, so the k8s config is checked with
    # its kubernetes_sd_configs swapped for a static target: everything else (relabelling, rules) is real.
    cfg = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9108"]}]
    cfg["rule_files"] = [str(PROM / f) for f in cfg["rule_files"]]
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump(cfg))
    promtool("check", "config", str(tmp_path / "k8s.yml"))


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "indexed-job.yaml").read_text()) if d]


def test_indexed_job_validates_against_kubernetes_schemas() -> None:
    docs = k8s_docs()
    assert {d["kind"] for d in docs} == {"Job", "PersistentVolumeClaim", "Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31.0", strict=True)  # raises ValidationError
    broken = next(d for d in docs if d["kind"] == "Job")
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["completionMode"] = ["Indexed"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.31.0", strict=True)


def test_indexed_job_shards_and_metrics_port_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from fetcher.config import load_config

    job = next(d for d in k8s_docs() if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] >= 1
    pod = spec["template"]
    (container,) = pod["spec"]["containers"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    cfg = load_config(container["args"])
    assert cfg.run.shard_pair == (7, spec["completions"])
    port = cfg.monitor.metrics_endpoint
    assert port is not None and port[0] == "0.0.0.0"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port[1])
    assert container["ports"][0]["containerPort"] == port[1]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}
    assert cfg.run.output.startswith("/data/")
    # The politeness store the pods share is the Service in front of the Redis Deployment.
    store = urlsplit(cfg.scheduler.politeness_store)
    service = next(d for d in k8s_docs() if d["kind"] == "Service")
    redis = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    assert store.hostname == service["metadata"]["name"]
    assert store.port == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
    assert (
        redis["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
        == service["spec"]["ports"][0]["targetPort"]
    )


def test_systemd_unit_runs_shard_i_with_its_own_metrics_port(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "fetcher@.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["Restart"] == "on-failure" and settings["KillSignal"] == "SIGTERM"
    assert settings["EnvironmentFile"] == "/etc/fetcher/fetcher.env"
    # Run the unit's own ExecStart shell line for instance 2, with fetcher swapped for a config dump.
    argv = shlex.split(settings["ExecStart"].replace("%i", "2"))
    assert argv[:2] == ["/bin/sh", "-c"]
    dump = f"{sys.executable} -c 'import sys; from fetcher.config import load_config as l; c = l(sys.argv[1:]);"
    dump += " print(c.run.shard_pair, c.monitor.metrics_endpoint)'"
    script = argv[2].replace("/opt/fetcher/.venv/bin/python -m fetcher", dump)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FETCHER_SHARDS="4", FETCHER_INPUT="in", FETCHER_OUTPUT="out")
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "(2, 4) ('127.0.0.1', 9110)", out.stderr
    # deploy/prometheus/prometheus.yml scrapes what compose runs: one fetcher on 9108 (more units: more lines).
    targets = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]
    assert targets["targets"] == ["127.0.0.1:9108"]


def test_systemd_unit_creates_and_hands_over_the_output_folder(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "fetcher@.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    user = settings["User"]
    pre = settings["ExecStartPre"]
    assert pre.startswith("+"), "the folder step must run as root ('+') to chown"
    argv = shlex.split(pre[1:])
    assert argv[:2] == ["/bin/sh", "-c"] and f"chown {user}:{settings['Group']}" in argv[2]
    me = f"{os.getuid()}:{os.getgid()}"  # the test cannot assume a 'fetcher' user: chown to ourselves
    script = argv[2].replace(f"{user}:{settings['Group']}", me)
    out = tmp_path / "data" / "laion-256"
    for value in (str(out), "s3://bucket/prefix"):
        env = dict(os.environ, FETCHER_OUTPUT=value)
        proc = subprocess.run(["/bin/sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert out.is_dir() and (out.stat().st_uid, out.stat().st_gid) == (os.getuid(), os.getgid())
    assert not (tmp_path / "s3:").exists()  # an object-store URL is not a folder to make


def test_dockerfile_and_compose_refer_to_real_files() -> None:
    docker = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", docker, re.M)
    sources = [s for line in copies for s in line.split()]
    assert sources and all((ROOT / s).exists() for s in sources), sources
    assert "bash deploy/install.sh" in docker  # Pillow-SIMD built the one tested way
    assert "EXPOSE 9108" in docker
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"output-folder", "fetcher", "prometheus", "grafana"}
    # The output folder is created and chowned to the image's user before fetcher starts.
    uid = re.search(r"useradd --uid (\d+)", docker)
    init = compose["services"]["output-folder"]
    assert uid and f"chown {uid[1]}:{uid[1]} /data/output" in " ".join(init["entrypoint"])
    assert init["user"] == "0:0" and init["volumes"] == compose["services"]["fetcher"]["volumes"][1:]
    depends = compose["services"]["fetcher"]["depends_on"]["output-folder"]
    assert depends["condition"] == "service_completed_successfully"
    build = compose["services"]["fetcher"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") and not src.startswith("${"):
                assert (DEPLOY / src).exists(), src
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert provisioned["datasources"][0]["url"] == "http://127.0.0.1:9090"
