"""deploy/: the KubeRay RayService carries exactly the Serve config `llmaas ray config` writes for its settings
(so it cannot drift from the code), valid for Ray Serve's schema; every node gets the secrets from the
environment, none is in the config; the Dockerfile installs the Ray extra at the image's Ray version."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from llmaas.cli.main import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_rayservice_config_is_what_llmaas_writes():
    from ray.serve.schema import ServeDeploySchema

    manifest = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    out = CliRunner().invoke(app, ["ray", "config", "--host", "0.0.0.0", "--data-dir", "/data/llmaas",
                                   "--workers", "1", "--threads", "4"], env={"LLMAAS_DATABASE_URL": "postgresql://u:secret@db/x"})
    assert out.exit_code == 0, out.output
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(out.output)
    ServeDeploySchema.model_validate(embedded)
    assert "secret" not in manifest["spec"]["serveConfigV2"]
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in head["env"]}
    assert {"LLMAAS_DATABASE_URL", "LLMAAS_REDIS_URL", "LLMAAS_MASTER_KEY", "LLMAAS_DATA_DIR"} <= names


def test_the_dockerfile_matches_the_ray_version_and_installs_the_extra():
    text = (DEPLOY / "Dockerfile").read_text()
    import ray

    assert re.search(rf"FROM rayproject/ray:{re.escape(ray.__version__)}-py311", text)
    assert '".[ray' in text and "torch==2.13.0" in text
