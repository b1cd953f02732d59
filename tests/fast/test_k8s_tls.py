"""Fast tier: deploy/k8s/README.md's private-CA instructions, applied as a user would, build into working objects.

The README's yaml block replaces three keys of the production overlay's kustomization.yaml; the build must put the CA
in the Secret (KEDA's secretTargetRef reads Secrets only), mount it into every Deployment at CELERY_SSL_CA_CERTS, and
for KEDA give the TriggerAuthentication `tls` and `ca` from that Secret with no `enableTLS` left on a Redis trigger
(KEDA's Redis scaler refuses `tls` in both places).
"""

import re
from pathlib import Path

import pytest
import yaml
from k8s_policy import build, require_kubectl, write_secret_env
from template import CHOICES, render

CA_PEM = "-----BEGIN CERTIFICATE-----\nnot parsed by kustomize\n-----END CERTIFICATE-----\n"


def readme_overlay(k8s: Path) -> dict:
    """The yaml block of the README's TLS section."""
    section = (k8s / "README.md").read_text().split("## TLS to ", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in deploy/k8s/README.md's TLS section"
    return yaml.safe_load(block.group(1))


@pytest.mark.parametrize("autoscaling", ["keda", "none"])
@pytest.mark.parametrize("broker", CHOICES["broker"])
def test_private_ca_instructions_build(broker: str, autoscaling: str, tmp_path: Path) -> None:
    require_kubectl()
    k8s = render(tmp_path, {"broker": broker, "autoscaling": autoscaling}) / "deploy" / "k8s"
    overlay = k8s / "overlays" / "production"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization.update(readme_overlay(k8s))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    (overlay / "ca.pem").write_text(CA_PEM)
    write_secret_env(overlay)
    docs = build(k8s, "production")

    [secret] = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("app-secrets")]
    assert "ca.pem" in secret["data"]
    [config] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("app-config")]
    path = config["data"]["CELERY_SSL_CA_CERTS"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert volumes["datastore-ca"]["secret"]["secretName"] == secret["metadata"]["name"], deployment["metadata"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0].get("volumeMounts", [])}
        assert f"{mounts['datastore-ca']}/ca.pem" == path, deployment["metadata"]["name"]

    if autoscaling != "keda":
        return
    [auth] = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert refs["ca"]["name"] == refs["tls"]["name"] == secret["metadata"]["name"]
    assert refs["ca"]["key"] in secret["data"] and refs["tls"]["key"] in secret["data"]
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        for trigger in obj["spec"]["triggers"]:
            assert "enableTLS" not in trigger["metadata"], f"{obj['metadata']['name']}: enableTLS next to `tls`"
