"""Fast tier: the Kubernetes manifests of every rendered variant build, validate and follow the policies.

For each supported answer set with use_kubernetes=y (plus every broker x autoscaling pair): both overlays build with
`kubectl kustomize` (skipped with the reason without kubectl, failed when CI=true), every document passes
kubernetes-validate's strict schemas of the three newest Kubernetes minors it bundles, KEDA's objects pass structural
checks, and the policies of k8s_policy.py hold. The build uses secret.env copied from the committed
secret.example.env, so the built Secret shows exactly what the committed files carry.
"""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from k8s_policy import (
    OVERLAYS,
    TEST_DATASTORE_CIDR,
    Checks,
    Manifests,
    build,
    check_keda,
    check_policies,
    documents_by_kind,
    read_env_file,
    real_secret,
    require_kubectl,
    schema_problems,
    validation_versions,
    write_datastore_env,
    write_secret_env,
)
from template import CHOICES, SUPPORTED, case_id, render

DEFAULTS = {name: values[0] for name, values in CHOICES.items()}


def _variants() -> list[dict[str, str]]:
    variants = [answers for answers in SUPPORTED if answers.get("use_kubernetes", "y") == "y"]
    covered = {(v.get("broker", DEFAULTS["broker"]), v.get("autoscaling", DEFAULTS["autoscaling"])) for v in variants}
    variants += [
        {"broker": broker, "autoscaling": autoscaling}
        for broker in CHOICES["broker"]
        for autoscaling in CHOICES["autoscaling"]
        if (broker, autoscaling) not in covered
    ]
    # The smallest output: no Flower, no web, no autoscaler (an overlay with nothing to patch).
    variants.append({"use_flower": "n", "use_web": "n", "autoscaling": "none"})
    return variants


VARIANTS = _variants()


@dataclass
class Built:
    answers: dict[str, str]
    project: Path
    docs: dict[str, list[dict]]

    @property
    def k8s(self) -> Path:
        return self.project / "deploy" / "k8s"

    def option(self, name: str) -> str:
        """The answer as rendered (recorded in .cookiecutter.json), defaults included."""
        return json.loads((self.project / ".cookiecutter.json").read_text())["cookiecutter"][name]

    @property
    def slug(self) -> str:
        return self.project.name

    @property
    def package(self) -> str:
        return self.slug.replace("-", "_")

    def namespace(self, overlay: str) -> str:
        return f"{self.slug}-staging" if overlay == "staging" else self.slug


@pytest.fixture(scope="module")
def versions() -> list[str]:
    found = validation_versions()
    print(f"\nkubernetes-validate schemas used: {', '.join(found)}")
    assert len(found) == 3, found
    return found


@pytest.fixture(scope="module", params=VARIANTS, ids=case_id)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require_kubectl()
    project = render(tmp_path_factory.mktemp("k8s"), request.param)
    k8s = project / "deploy" / "k8s"
    docs = {}
    for overlay in OVERLAYS:
        assert not (k8s / "overlays" / overlay / "secret.env").exists(), "secret.env must never be rendered"
        write_secret_env(k8s / "overlays" / overlay)
        docs[overlay] = build(k8s, overlay)
    return Built(request.param, project, docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_passes_strict_schemas(built: Built, overlay: str, versions: list[str]) -> None:
    docs = built.docs[overlay]
    passed, problems = schema_problems(docs, versions)
    keda = sum(1 for doc in docs if doc["apiVersion"].startswith("keda.sh/"))
    print(
        f"\n{case_id(built.answers)} {overlay}: {len(docs)} documents ({', '.join(documents_by_kind(docs))}); "
        f"{passed} strict validations against {', '.join(versions)}; {keda} KEDA documents without a schema"
    )
    assert not problems, "\n".join(problems)
    assert passed == (len(docs) - keda) * len(versions)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policies_hold(built: Built, overlay: str) -> None:
    manifests = Manifests(built.docs[overlay])
    check = Checks()
    check_policies(manifests, check, slug=built.slug, package=built.package, namespace=built.namespace(overlay))
    keda = Checks()
    if built.option("autoscaling") == "keda":
        check_keda(manifests, keda, broker=built.option("broker"))
    print(f"\n{case_id(built.answers)} {overlay}: {check.count} policy checks, {keda.count} KEDA checks")
    check.assert_ok()
    keda.assert_ok()


def test_autoscaling_answer_decides_the_worker_autoscalers(built: Built) -> None:
    for overlay in OVERLAYS:
        manifests = Manifests(built.docs[overlay])
        workers = sorted(d["metadata"]["name"] for d in manifests.by_command("worker"))
        queues = sorted(q for d in manifests.by_command("worker") for q in manifests.worker_queues(d))
        assert queues == sorted(built.option("queues").replace(" ", "").split(",")), "one worker per queue"
        scaled = sorted(s["spec"]["scaleTargetRef"]["name"] for s in manifests.of("ScaledObject", "keda.sh"))
        hpas = sorted(
            h["spec"]["scaleTargetRef"]["name"]
            for h in manifests.of("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] in workers
        )
        expected = {"keda": (workers, []), "hpa": ([], workers), "none": ([], [])}[built.option("autoscaling")]
        assert (scaled, hpas) == expected, f"{overlay}: ScaledObjects {scaled}, worker HPAs {hpas}"
        web = [h for h in manifests.of("HorizontalPodAutoscaler") if h["metadata"]["name"] == "web"]
        assert len(web) == (built.option("use_web") == "y")
        assert bool(manifests.get("Deployment", "flower")) == (built.option("use_flower") == "y")
        staging_only = {"redis"} | ({"rabbitmq"} if built.option("broker") == "rabbitmq" else set())
        stateful = {s["metadata"]["name"] for s in manifests.of("StatefulSet")}
        assert stateful == (staging_only if overlay == "staging" else set()), f"{overlay}: StatefulSets {stateful}"


def test_committed_files_carry_no_secret(built: Built) -> None:
    ignored = (built.k8s / ".gitignore").read_text().splitlines()
    assert "secret.env" in ignored, "secret.env must be git-ignored"
    for path in built.k8s.rglob("*"):
        if path.name == "secret.env" or not path.is_file():
            continue
        if path.suffix == ".yaml" and path.name != "kustomizeconfig.yaml":
            kinds = [doc.get("kind") for doc in yaml.safe_load_all(path.read_text()) if doc]
            assert "Secret" not in kinds, f"{path.name}: Secrets come from the secretGenerator, not a manifest"
        if path.name == "secret.example.env":
            values = read_env_file(path)
            assert values, path
            real = [key for key, value in values.items() if real_secret(key, value)]
            assert not real, f"{path.relative_to(built.project)}: {real} are not placeholders"


def test_images_are_overridable_through_kustomize_images(built: Built, tmp_path: Path) -> None:
    """A deploy pipeline adds an overlay (or runs `kustomize edit set image`): the tag reaches every app container."""
    overlay = built.k8s / "overlays" / "ci-test"
    overlay.mkdir()
    try:
        (overlay / "kustomization.yaml").write_text(
            f"resources: [../production]\nimages:\n  - name: registry.example.com/{built.slug}\n    newTag: '1.2.3'\n"
        )
        docs = build(built.k8s, "ci-test")
    finally:
        shutil.rmtree(overlay)
    images = {
        c["image"]
        for d in Manifests(docs).workloads()
        for c in Manifests.containers(d)
        if c.get("command", [""])[0].startswith("bin/")
    }
    assert images == {f"registry.example.com/{built.slug}:1.2.3"}, images


def test_the_web_body_limit_is_valid_on_the_base_and_in_a_stacked_overlay(tmp_path: Path) -> None:
    """proxy-body-size is a size ingress-nginx accepts in an overlay built on the base alone, and an overlay stacked on
    production that changes CELERY_MAX_PAYLOAD_BYTES and repeats the replacements block (deploy/k8s/README.md) gets
    its own value. The default answers: the wiring does not depend on the others."""
    require_kubectl()
    k8s = render(tmp_path, {}) / "deploy" / "k8s"
    write_secret_env(k8s / "overlays" / "production")
    annotation = "nginx.ingress.kubernetes.io/proxy-body-size"
    replacements = yaml.safe_load((k8s / "overlays" / "production" / "kustomization.yaml").read_text())
    stacked = {
        "resources": ["../production"],
        "configMapGenerator": [
            {"name": "app-config", "behavior": "merge", "literals": ["CELERY_MAX_PAYLOAD_BYTES=2097152"]}
        ],
        "replacements": replacements["replacements"],
    }
    default = read_env_file(k8s / "base" / "config.env")["CELERY_MAX_PAYLOAD_BYTES"]
    limits = {}
    for name, kustomization in (("on-base", {"resources": ["../../base"]}), ("on-production", stacked)):
        overlay = k8s / "overlays" / name
        overlay.mkdir()
        try:
            (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            ingress = Manifests(build(k8s, name)).get("Ingress", "web")
        finally:
            shutil.rmtree(overlay)
        limits[name] = ingress["metadata"]["annotations"][annotation]
    print(f"\n{annotation}: {limits}")
    assert limits == {"on-base": default, "on-production": "2097152"}, limits
    assert default.isdigit(), default


def test_kubernetes_validate_cli_agrees(versions: list[str], tmp_path: Path) -> None:
    """The command a user would run, on the default answers: exit 0 and no ERROR for either overlay."""
    require_kubectl()
    project = render(tmp_path, {})
    k8s = project / "deploy" / "k8s"
    for overlay in OVERLAYS:
        write_secret_env(k8s / "overlays" / overlay)
        built = subprocess.run(
            ["kubectl", "kustomize", str(k8s / "overlays" / overlay)], capture_output=True, text=True, check=True
        )
        out = tmp_path / f"{overlay}.yaml"
        out.write_text(built.stdout)
        argv = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
        argv += [arg for version in versions for arg in ("-k", version)]
        result = subprocess.run([*argv, str(out)], capture_output=True, text=True, check=False)
        errors = [line for line in result.stdout.splitlines() if not line.startswith("WARN")]
        warned = {
            line.split("kind ")[1].split(" ")[0] for line in result.stdout.splitlines() if line.startswith("WARN")
        }
        print(f"\nkubernetes-validate --strict {overlay}: exit {result.returncode}; no schema for {sorted(warned)}")
        assert result.returncode == 0 and not errors, result.stdout + result.stderr
        assert warned <= {"ScaledObject", "TriggerAuthentication"}


@pytest.mark.parametrize("answers", [{"use_kubernetes": "n"}], ids=case_id)
def test_no_manifests_without_kubernetes(answers: dict[str, str], tmp_path: Path) -> None:
    project = render(tmp_path, answers)
    assert not (project / "deploy" / "k8s").exists()
    assert "## Kubernetes" not in (project / "README.md").read_text()


def test_flower_reaches_the_internet_only_through_the_opt_in_allow_list(built: Built) -> None:
    """No Ingress for Flower by default; the opt-in component builds only once allowlist.env names the ranges."""
    if built.option("use_flower") != "y":
        pytest.skip("use_flower=n: no Flower")
    for overlay in OVERLAYS:
        routed = [i for i in Manifests(built.docs[overlay]).of("Ingress") if "flower" in json.dumps(i["spec"])]
        assert routed == [], f"{overlay}: an Ingress reaches Flower by default"
    component = built.k8s / "components" / "flower-ingress"
    overlay = built.k8s / "overlays" / "flower-opt-in"
    kubectl = require_kubectl()
    try:
        # Production as a user opts in: its kustomization with the commented `components:` lines enabled.
        shutil.copytree(built.k8s / "overlays" / "production", overlay, dirs_exist_ok=True)
        with (overlay / "kustomization.yaml").open("a") as kustomization:
            kustomization.write("\ncomponents:\n  - ../../components/flower-ingress\n")
        refused = {}
        for case, text in {
            "no allowlist.env": None,
            "the example copied unchanged": (component / "allowlist.example.env").read_text(),
        }.items():
            (component / "allowlist.env").unlink(missing_ok=True)
            if text is not None:
                (component / "allowlist.env").write_text(text)
            result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
            assert result.returncode != 0, f"{case}: the opt-in overlay built without an allow-list"
            refused[case] = result.stderr.strip().splitlines()[-1][-160:]
        ranges = "203.0.113.0/24,198.51.100.7/32"
        (component / "allowlist.env").write_text(f"FLOWER_ALLOWED_SOURCE_RANGES={ranges}\n")
        manifests = Manifests(build(built.k8s, "flower-opt-in"))
    finally:
        shutil.rmtree(overlay)
        (component / "allowlist.env").unlink(missing_ok=True)
    for case, error in refused.items():
        print(f"\nopt-in Flower Ingress, {case}: build refused: ...{error}")
    ingress = manifests.get("Ingress", "flower")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/whitelist-source-range"] == ranges
    assert manifests.get("ConfigMap", "flower-allowlist") is None, "the build-time allow-list must not be deployed"
    check = Checks()
    check_policies(manifests, check, slug=built.slug, package=built.package, namespace=built.namespace("production"))
    check.assert_ok()
    print(f"opt-in Flower Ingress with {ranges}: {check.count} policy checks hold")


def test_production_needs_the_datastore_range_to_build(built: Built) -> None:
    """Production's NetworkPolicy gets the managed datastores' range from datastore.env, or the build fails."""
    overlay = built.k8s / "overlays" / "production"
    kubectl = require_kubectl()
    refused = {}
    try:
        for case, text in {
            "no datastore.env": None,
            "the example copied unchanged": (overlay / "datastore.example.env").read_text(),
        }.items():
            (overlay / "datastore.env").unlink(missing_ok=True)
            if text is not None:
                (overlay / "datastore.env").write_text(text)
            result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
            assert result.returncode != 0, f"{case}: production built without the datastore range"
            refused[case] = result.stderr.strip().splitlines()[-1][-160:]
    finally:
        write_datastore_env(overlay)
    for case, error in refused.items():
        print(f"\nproduction, {case}: build refused: ...{error}")
    policy = Manifests(built.docs["production"]).get("NetworkPolicy", "app-to-datastores")
    assert policy["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": TEST_DATASTORE_CIDR}}]


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "TODO-managed-datastore-cidr", ""])
def test_policy_check_refuses_datastore_egress_to_everyone_or_a_placeholder(built: Built, cidr: str) -> None:
    docs = json.loads(json.dumps(built.docs["production"]))  # a copy to spoil
    policy = Manifests(docs).get("NetworkPolicy", "app-to-datastores")
    policy["spec"]["egress"][0]["to"] = [{"ipBlock": {"cidr": cidr}}]
    check = Checks()
    check_policies(Manifests(docs), check, slug=built.slug, package=built.package, namespace=built.slug)
    assert any("app-to-datastores" in failure and repr(cidr) in failure for failure in check.failures), check.failures


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_list_names_follow_an_overlay_prefix(built: Built, overlay: str) -> None:
    """An overlay that sets its own CELERY_KEY_PREFIX: KEDA counts the lists the workers then use."""
    if (built.option("broker"), built.option("autoscaling")) != ("redis", "keda"):
        pytest.skip("KEDA's listName exists with broker=redis and autoscaling=keda only")
    copy = built.k8s / "overlays" / f"{overlay}-prefix"
    shutil.copytree(built.k8s / "overlays" / overlay, copy)
    try:
        kustomization = copy / "kustomization.yaml"
        merge = f"      - ENVIRONMENT={overlay}\n"
        assert merge in kustomization.read_text()
        kustomization.write_text(kustomization.read_text().replace(merge, merge + "      - CELERY_KEY_PREFIX=other\n"))
        manifests = Manifests(build(built.k8s, copy.name))
    finally:
        shutil.rmtree(copy)
    names = sorted(s["spec"]["triggers"][0]["metadata"]["listName"] for s in manifests.of("ScaledObject", "keda.sh"))
    print(f"\n{overlay} with CELERY_KEY_PREFIX=other: listName {names}")
    assert names == sorted(f"other:{q}" for q in built.option("queues").replace(" ", "").split(","))
    keda = Checks()
    check_keda(manifests, keda, broker="redis")
    keda.assert_ok()


def test_generated_project_refuses_open_address_ranges(tmp_path: Path) -> None:
    """kustomize copies values unchecked: the project's own tests/test_deploy_values.py refuses the open ones."""
    project = render(tmp_path, {})
    allowlist = project / "deploy" / "k8s" / "components" / "flower-ingress" / "allowlist.env"
    datastore = project / "deploy" / "k8s" / "overlays" / "production" / "datastore.env"

    def run() -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q", "-rs"]
        argv.append("tests/test_deploy_values.py")
        return subprocess.run(argv, cwd=project, capture_output=True, text=True, check=False)

    outcomes = {}
    for case, allowed, cidr in [
        ("no files yet", None, None),
        ("empty allow-list", "FLOWER_ALLOWED_SOURCE_RANGES=", "10.20.0.0/24"),
        ("allow-list 0.0.0.0/0", "FLOWER_ALLOWED_SOURCE_RANGES=203.0.113.0/24,0.0.0.0/0", "10.20.0.0/24"),
        ("datastore ::/0", "FLOWER_ALLOWED_SOURCE_RANGES=203.0.113.0/24", "::/0"),
        ("real ranges", "FLOWER_ALLOWED_SOURCE_RANGES=203.0.113.0/24", "10.20.0.0/24"),
    ]:
        for path, line in ((allowlist, allowed), (datastore, None if cidr is None else f"DATASTORE_CIDR={cidr}")):
            path.unlink(missing_ok=True)
            if line is not None:
                path.write_text(line + "\n")
        result = run()
        failed = [line for line in result.stdout.splitlines() if line.startswith("E ") and ".env:" in line]
        outcomes[case] = (result.returncode, failed[:1])
    for case, outcome in outcomes.items():
        print(f"\n{case}: exit {outcome[0]} {outcome[1]}")
    assert outcomes["no files yet"][0] == 0
    assert outcomes["real ranges"] == (0, [])
    for case in ("empty allow-list", "allow-list 0.0.0.0/0", "datastore ::/0"):
        assert outcomes[case][0] == 1 and outcomes[case][1], f"{case}: {outcomes[case]}"
