"""The cluster workflows: `python -m pipeline submit` to a head started with Ray's defaults (token
authentication on, as soon as a token exists), what the upload holds, and the deployment files
under deploy/ validated against the schemas their tools use."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import tomllib
from pipeline_helpers import mlflow_children, start_head, stop_cluster, tiny_config, tiny_dict, write_yaml

from pipeline.grid import plan
from records.tables import read_table

REPO = Path(__file__).resolve().parents[1]


def test_upload_holds_the_code_not_results(tmp_path):
    """What `ray job submit --working-dir .` uploads, as Ray itself packs it (.gitignore + .rayignore)."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(REPO), tmp_path / "pkg.zip", include_gitignore=True)
    names = zipfile.ZipFile(tmp_path / "pkg.zip").namelist()
    assert "pipeline/cli.py" in names and "configs/smoke.yaml" in names and "notebooks/analyze.py" in names
    assert not [n for n in names if n.startswith(("results/", ".git/", "runs/")) or n.endswith((".ipynb", ".db"))]
    assert (tmp_path / "pkg.zip").stat().st_size < 2 * 2**20


def test_the_image_copies_every_package_the_project_installs():
    """deploy/Dockerfile copies each package of pyproject.toml's setuptools ``include``: a package
    added to the project but not to the image fails on the cluster only."""
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s", (REPO / "deploy" / "Dockerfile").read_text(), re.M)
    assert {p.rstrip("*") for p in include} <= set(copied), f"include {include}, the image copies {copied}"


@pytest.mark.slow  # a Ray head started by ray start, a job submitted
def test_pipeline_submit_with_rays_default_token_auth(tmp_path):
    """A head started with Ray's defaults where a token exists (as `ray start` or a first `ray.init()`
    leaves it in ~/.ray/auth_token): a plain `ray job submit` is refused; `python -m pipeline submit`
    runs the sweep, records the checkout's commit, and a second submission says there is nothing to do
    and adds no MLflow run."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(var, None)  # Ray's defaults, not the test session's RAY_AUTH_MODE=disabled
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        address = start_head(env, temp)
        plain = subprocess.run([ray_bin, "job", "submit", "--address", address, "--", "true"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and "Authentication required" in plain.stdout + plain.stderr

        cfg = tiny_config(name="job", grid=dict(n=[4], m=[16]))
        cfg_path = write_yaml(tmp_path / "job.yaml", tiny_dict(name="job", grid=dict(n=[4], m=[16])))
        out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
        argv = [sys.executable, "-m", "pipeline", "submit", "--address", address, "--", "run", cfg_path, "--out",
                str(out), "--tracking-uri", uri, "--no-progress"]
        job = submit_when_agent_up(argv, env, tmp_path)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "sweep finished" in job.stdout
        runs = read_table(out, "runs")
        assert runs.num_rows == plan(cfg)[1]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        assert commit and {c.split("+")[0] for c in runs.column("git_commit").to_pylist()} == {commit}
        assert len(mlflow_children(uri, "job")) == runs.num_rows

        again = submit_when_agent_up(argv, env, tmp_path)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert f"nothing to do: all {runs.num_rows} runs are already in Parquet and MLflow" in again.stdout
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("job")
        assert len(client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")) == 1
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def submit_when_agent_up(argv, env, cwd):
    """The head's job agent may come up after the dashboard answers."""
    import time

    for _ in range(30):
        job = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400, cwd=cwd)
        if "No available agent" not in job.stdout + job.stderr:
            return job
        time.sleep(2)
    return job


def test_cluster_launcher_config_passes_rays_validation():
    """What `ray up` checks before it starts anything: Ray's defaults filled in, then Ray's JSON schema
    (ray-schema.json) and its own rules (head type among the node types, worker counts)."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "deploy" / "gpu-cluster.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}  # the driver only
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers)  # autoscaling
    assert "gpu" in prepared["docker"]["image"]
    assert any("pip install" in c and "-e /home/ray/sobolev-scaling" in c for c in prepared["setup_commands"])
    assert any(c.lstrip("(").startswith("nohup mlflow server") for c in prepared["head_start_ray_commands"])
    assert "." in prepared["file_mounts"].values() and "results/" in prepared["rsync_exclude"]
    # a broken file is refused the same way (the check can fail)
    import jsonschema
    import pytest

    with pytest.raises(jsonschema.ValidationError):
        validate_config(dict(prepared, max_workers="eight"))


def test_rayjob_manifest_matches_kuberays_crd_schema():
    """deploy/rayjob.yaml against KubeRay's RayJob CRD openAPIV3Schema (the part along the manifest's paths,
    extracted by deploy/schema/extract_rayjob_schema.py with its required fields and property names)."""
    import jsonschema
    import pytest
    import yaml

    schema = json.loads((REPO / "deploy" / "schema" / "rayjob-v1.schema.json").read_text())
    manifest = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == (schema["x-apiVersion"], schema["x-kind"])
    jsonschema.validate(manifest, schema)
    spec = manifest["spec"]
    assert spec["entrypoint"].startswith("python -m pipeline run ")
    gpu = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"] and spec["rayClusterSpec"]["enableInTreeAutoscaling"]
    # what the CRD requires, and a misspelling, are caught
    broken = json.loads(json.dumps(manifest))
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError, match="groupName"):
        jsonschema.validate(broken, schema)
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(broken, schema)


@pytest.mark.slow
def test_submit_checks_on_the_client_before_uploading_and_the_job_refuses_its_temporary_directory(tmp_path):
    """Against a real head: a bad config, a bad option, a relative --out and a tracking store the job
    would keep in its temporary working directory are refused by `submit` with one line and exit 2,
    and nothing reaches the cluster (no job). A plain `ray job submit` of the same command is refused
    by the driver on the head, in one line, before any work. A good submission runs, with its
    progress bar never past 100% and no TqdmWarning."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        address = start_head(env, temp)
        good = tiny_dict(name="sub", grid=dict(n=[4], m=[16]))
        cfg_path = write_yaml(tmp_path / "sub.yaml", good)
        bad_path = write_yaml(tmp_path / "bad.yaml", tiny_dict(name="sub", grid=dict(k=[5])))
        out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
        submit = [sys.executable, "-m", "pipeline", "submit", "--address", address, "--", "run"]
        refused = {
            "k=5 must be < d=5": [bad_path, "--out", str(out), "--tracking-uri", uri],
            "--num-cpus: 0 CPUs": [cfg_path, "--out", str(out), "--tracking-uri", uri, "--num-cpus", "0"],
            "output: runs/sub is relative: under submit": [cfg_path, "--out", "runs/sub", "--tracking-uri", uri],
            "tracking: no --tracking-uri and no tracking.uri in the config": [cfg_path, "--out", str(out)],
            "tracking: sqlite:///mlflow.db is a relative path": [cfg_path, "--out", str(out), "--tracking-uri",
                                                                  "sqlite:///mlflow.db"],
        }
        from concurrent.futures import ThreadPoolExecutor

        def attempt(args):
            return subprocess.run([*submit, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

        with ThreadPoolExecutor(2) as pool:  # independent client-side refusals, two at a time
            for words, proc in zip(refused, pool.map(attempt, refused.values())):
                lines = (proc.stdout + proc.stderr).strip().splitlines()
                assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], (words, proc.returncode, lines)
        jobs = subprocess.run([ray_bin, "job", "list", "--address", address], env=env, capture_output=True,
                              text=True, timeout=120)
        assert jobs.returncode == 0 and "submission_id" not in jobs.stdout, jobs.stdout  # nothing was uploaded

        by_hand = submit_when_agent_up(
            [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", "python", "-m",
             "pipeline", "run", cfg_path, "--out", str(out), "--no-progress"], env, tmp_path)
        # one line (Ray prints the job's log twice: tailed, then in its status message)
        said = sorted({x for x in (by_hand.stdout + by_hand.stderr).splitlines() if x.startswith("error: ")})
        assert by_hand.returncode != 0 and len(said) == 1, by_hand.stdout[-3000:]
        assert "exit code 2" in by_hand.stdout + by_hand.stderr
        assert re.match(r"error: tracking: the MLflow store sqlite:///\S+/working_dir_files/_ray_pkg_\w+/mlflow.db "
                        r"would be inside the job's temporary working directory", said[0]), said
        assert not out.exists()  # refused before any work

        job = submit_when_agent_up([*submit, cfg_path, "--out", str(out), "--tracking-uri", uri], env, tmp_path)
        text = job.stdout + job.stderr
        assert job.returncode == 0, text[-3000:]
        assert "TqdmWarning" not in text
        shown = [int(p) for p in re.findall(r"(\d+)%\|", text)]
        assert shown and max(shown) == 100, shown
        assert read_table(out, "runs").num_rows == plan(tiny_config(name="sub", grid=dict(n=[4], m=[16])))[1]
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_the_lock_files_the_pipeline_leaves_are_ignored_by_git():
    """`.pipeline.lock` in an output and `.mlflow.db.create.lock` beside the default SQLite store (the
    repository root when run from there) are never left untracked in a checkout, nor uploaded."""
    from pipeline.lock import LOCK_NAME, creation_lock_path

    paths = [REPO / LOCK_NAME, creation_lock_path(REPO / "mlflow.db"), creation_lock_path(REPO / "runs" / "x.db")]
    assert creation_lock_path(REPO / "mlflow.db").name == ".mlflow.db.create.lock"
    for path in paths:
        check = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(REPO))], cwd=REPO)
        assert check.returncode == 0, f"{path.relative_to(REPO)} is not ignored by .gitignore"
    tracked = subprocess.run(["git", "check-ignore", "-q", "pipeline/cli.py"], cwd=REPO)
    assert tracked.returncode == 1  # the check can fail


# -- the tracking server (deploy/tracking/, deploy/tracking-server.yaml) --------------------------------------------

TRACKING = REPO / "deploy" / "tracking"
K8S_VERSION = "1.30"


def _k8s_docs() -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all((REPO / "deploy" / "tracking-server.yaml").read_text()) if d]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_tracking_server_manifests_pass_kubernetes_strict_schemas_and_fit_together():
    """Every object of deploy/tracking-server.yaml against Kubernetes' own JSON schemas (strict: unknown
    keys fail, as `kubectl apply --validate=strict`), then what ties them to each other and to the pipeline:
    secrets only by reference, the store URI without a password, the service the RayJob names."""
    import kubernetes_validate
    import pytest
    import yaml

    from pipeline.tracking import uri_problem

    docs = _k8s_docs()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    secret = by["Secret", "mlflow-credentials"]["stringData"]
    assert all(v.startswith("CHANGE-ME") for v in secret.values())  # placeholders, refused by the entrypoint
    deploy = by["Deployment", "mlflow"]["spec"]["template"]["spec"]
    (mlflow,) = deploy["containers"]
    env = _env(mlflow)
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert "value" not in env[name] and ref["name"] == "mlflow-credentials" and ref["key"] in secret
    store = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert store.startswith("postgresql+psycopg://mlflow@postgres:5432/") and uri_problem(store) is None
    # the database the store names is the one PostgreSQL creates; the auth app's is created by the init script
    pg = by["StatefulSet", "postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert store.rsplit("/", 1)[1] == _env(pg)["POSTGRES_DB"]["value"]
    assert "CREATE DATABASE mlflow_auth" in by["ConfigMap", "postgres-initdb"]["data"]["10-mlflow-auth.sql"]
    assert _env(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-password"
    assert by["Service", "postgres"]["spec"]["ports"][0]["port"] == 5432
    # artifacts on the claim; the Deployment's probes on MLflow's unauthenticated /health
    claims = {name for kind, name in by if kind == "PersistentVolumeClaim"}
    assert deploy["volumes"][0]["persistentVolumeClaim"]["claimName"] in claims
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == mlflow["volumeMounts"][0]["mountPath"]
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"
    # the RayJob's driver reaches this Service, and the server answers that Host header
    rayjob = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    uri = _env(head)["MLFLOW_TRACKING_URI"]["value"]
    host_port = uri.removeprefix("http://")
    service = by["Service", "mlflow"]
    assert host_port == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:" \
                        f"{service['spec']['ports'][0]['port']}"
    assert host_port in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= {
        n for n, e in _env(head).items() if "secretKeyRef" in e.get("valueFrom", {})}
    job = by["Job", "mlflow-create-sweeper"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][-1].endswith("create_account.py") and _env(job)["ACCOUNT_USERNAME"]["value"] == "sweeper"
    # the check can fail: a misspelled key, and a missing required field
    broken = json.loads(json.dumps(by["Deployment", "mlflow"]))
    broken["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(by["Deployment", "mlflow"]))
    del broken["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_rayjob_pod_templates_pass_kubernetes_strict_schema():
    """The RayJob's head and worker pod templates are core PodTemplateSpecs: Kubernetes' own schema,
    strict, checks what the extracted KubeRay schema only types (e.g. env valueFrom.secretKeyRef)."""
    import kubernetes_validate
    import pytest
    import yaml

    spec = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for template in templates:
        pod = dict(apiVersion="v1", kind="PodTemplate", metadata=dict(name="t"), template=template)
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(templates[0]))
    broken["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["nmae"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dict(apiVersion="v1", kind="PodTemplate", metadata=dict(name="t"),
                                          template=broken), K8S_VERSION, strict=True)


def test_compose_file_passes_the_compose_spec_and_matches_what_the_pipeline_expects():
    """deploy/tracking/compose.yaml against the Compose Specification's JSON schema, then: secrets only
    as files, the store URI without a password and naming the database PostgreSQL creates, the auth
    app's database created by initdb.sql, the files the Dockerfile and the services use exist, one
    pinned server version (the client's major version) in every image, published on 127.0.0.1 only."""
    import configparser
    from importlib.metadata import version

    import jsonschema
    import pytest
    import yaml

    from pipeline.tracking import uri_problem

    # the spec's schema is draft 07 (its $schema URI lacks the '#' jsonschema looks up)
    spec = jsonschema.Draft7Validator(json.loads((REPO / "deploy" / "schema" / "compose-spec.json").read_text()))
    compose = yaml.safe_load((TRACKING / "compose.yaml").read_text())
    spec.validate(compose)
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "create-account"}
    for name, svc in services.items():
        for key, value in svc.get("environment", {}).items():
            assert "PASSWORD" not in key and "SECRET" not in key or key.endswith("_FILE"), (name, key)
        for s in svc.get("secrets", []):
            assert s in compose["secrets"], (name, s)
    for s in compose["secrets"].values():
        assert s["file"].startswith("./secrets/")  # ignored by git (.gitignore)
    assert "deploy/tracking/secrets/" in (REPO / ".gitignore").read_text()
    pg, server = services["postgres"]["environment"], services["mlflow"]["environment"]
    store = server["MLFLOW_BACKEND_STORE_URI"]
    assert store == f"postgresql+psycopg://{pg['POSTGRES_USER']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert uri_problem(store) is None
    assert (TRACKING / services["postgres"]["volumes"][1].split(":")[0]).resolve() == TRACKING / "initdb.sql"
    ini = configparser.ConfigParser()
    ini.read(TRACKING / "basic_auth.ini")
    auth_db = ini["mlflow"]["database_uri"]
    assert auth_db == f"postgresql+psycopg://{pg['POSTGRES_USER']}@postgres:5432/mlflow_auth"
    assert uri_problem(auth_db) is None
    assert "CREATE DATABASE mlflow_auth" in (TRACKING / "initdb.sql").read_text()
    assert int(ini["mlflow"]["auth_cache_ttl_seconds"]) > 0  # a PBKDF2 check per request otherwise
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert "127.0.0.1:5000" in server["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    dockerfile = (TRACKING / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            assert all((TRACKING / f).is_file() for f in line.split()[1:-1]), line
    # one pinned server version everywhere, of the client's major version (the REST API's)
    pinned = next(ln.split("=", 1)[1] for ln in dockerfile.splitlines() if ln.startswith("ARG MLFLOW_VERSION="))
    assert pinned.split(".")[0] == version("mlflow").split(".")[0]
    assert services["mlflow"]["image"].endswith(f":{pinned}")
    k8s_images = {c["image"] for d in _k8s_docs() if d["kind"] in ("Deployment", "Job")
                  for c in d["spec"]["template"]["spec"]["containers"]}
    assert k8s_images == {f"REGISTRY/sobolev-mlflow:{pinned}"}
    account = services["create-account"]["environment"]
    assert account["ACCOUNT_USERNAME"] == "sweeper" and account["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        spec.validate(dict(compose, services=dict(services, mlflow=dict(services["mlflow"], prots=[]))))


def test_server_entrypoint_refuses_placeholder_secrets_and_a_password_in_the_store_uri(tmp_path):
    """deploy/tracking/entrypoint.sh, run as the container runs it: the example Secret's placeholders,
    a missing secret and a password in MLFLOW_BACKEND_STORE_URI stop it with one line, exit 2, before
    MLflow starts."""
    secret = tmp_path / "pw"
    secret.write_text("CHANGE-ME-postgres\n")
    base = dict(PATH=os.environ["PATH"], MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://mlflow@127.0.0.1:1/mlflow",
                MLFLOW_AUTH_ADMIN_PASSWORD="a-real-one", MLFLOW_FLASK_SERVER_SECRET_KEY="k")
    cases = [(dict(base, PGPASSWORD_FILE=str(secret)), "PGPASSWORD is still the placeholder"),
             ({k: v for k, v in base.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"} | dict(PGPASSWORD="x"),
              "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
             (dict(base, PGPASSWORD="x", MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://mlflow:pw@h:5432/mlflow"),
              "carries a password")]
    for env, said in cases:
        p = subprocess.run(["sh", str(TRACKING / "entrypoint.sh")], env=env, capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 2 and said in p.stderr and len(p.stderr.strip().splitlines()) == 1, (said, p.stderr)
