"""A throwaway PostgreSQL cluster and an MLflow tracking server on it, on 127.0.0.1, as
deploy/tracking/ runs them (its entrypoint.sh, basic_auth.ini and create_account.py):
``postgresql+psycopg://`` backend store, proxied artifact root, MLflow's basic-auth app (its user
store in the same PostgreSQL), every password in a file or the environment (never in a URI or on
a command line).

Used by the tests (a session fixture in conftest.py) and by benchmarks/bench_logging.py.
PostgreSQL refuses to run as root: as root, its files go to a directory owned by the
``postgres`` user and its commands run as that user (``runuser``)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_helpers import free_port, wait_http

DB_USER = "mlflow"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "tracking"


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, pg_ctl): ``SOBOLEV_PG_BIN``, else
    ``initdb`` on PATH, else Debian's newest /usr/lib/postgresql/*/bin; None when absent."""
    env = os.environ.get("SOBOLEV_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "initdb").is_file() else None
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(debian[-1]).parent if debian else None


def _as_db_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Postgres:
    """A PostgreSQL cluster in a temporary directory, password-authenticated (scram-sha-256)."""

    bin: Path
    root: Path = field(init=False)
    port: int = field(init=False)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def start(self, durable: bool = True) -> "Postgres":
        """``durable=False`` turns fsync off (tests; the benchmark keeps PostgreSQL's defaults)."""
        # /tmp, not pytest's tmp_path: the postgres user must reach it, and socket paths must be short
        self.root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        pwfile.chmod(0o600)
        data = self.root / "data"
        run = dict(check=True, capture_output=True, text=True, timeout=120)
        subprocess.run(_as_db_owner([str(self.bin / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(pwfile),
                                     "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]), **run)
        pwfile.unlink()
        opts = ["-c listen_addresses=127.0.0.1", f"-k {self.root}", "-c max_connections=100"]
        if not durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        for _ in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            proc = subprocess.run(_as_db_owner([str(self.bin / "pg_ctl"), "-D", str(data), "-l",
                                                str(self.root / "log"), "-w", "-t", "60", "start", "-o",
                                                " ".join([f"-p {self.port}", *opts])]),
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {proc.stderr[-500:]}{self.log()[-1500:]}")
        for db in ("mlflow", "mlflow_auth"):
            self.execute(f"CREATE DATABASE {db}")
        return self

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log").read_text()
        return ""

    def uri(self, db: str = "mlflow") -> str:
        """A SQLAlchemy URI without the password (libpq takes it from ``PGPASSWORD``)."""
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{db}"

    def execute(self, sql: str, db: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=self.password, dbname=db,
                             autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_db_owner([str(self.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with the PostgreSQL store of ``pg``; with ``auth``, MLflow's
    basic-auth app with admin ``admin`` (password :attr:`admin_password`), its credential cache on
    (deploy/tracking/basic_auth.ini)."""

    pg: Postgres
    artifacts: Path
    auth: bool = True
    workers: int = 2
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(init=False)
    proc: subprocess.Popen | None = field(init=False, default=None)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        """With ``auth``, through deploy/tracking/entrypoint.sh (the container's start command) with
        the secrets in files (``*_FILE``), as the deployment passes them; else a plain ``mlflow server``."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        base = self.artifacts.parent
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_", "PG"))}
        env.update(MLFLOW_BACKEND_STORE_URI=self.pg.uri("mlflow"), MLFLOW_ARTIFACTS_DESTINATION=str(self.artifacts),
                   PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
        if self.auth:
            ini = base / f"basic_auth-{id(self)}.ini"
            ini.write_text(auth_ini(self.pg.uri("mlflow_auth")))
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_HOST="127.0.0.1", MLFLOW_WORKERS=str(self.workers),
                       PGPASSWORD_FILE=_secret(base / "pg_password", self.pg.password),
                       MLFLOW_AUTH_ADMIN_PASSWORD_FILE=_secret(base / "admin_password", self.admin_password),
                       MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=_secret(base / "flask_key", secrets.token_hex(16)))
            argv = ["sh", str(DEPLOY / "entrypoint.sh")]
        else:
            env.update(PGPASSWORD=self.pg.password)
            argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--workers", str(self.workers)]
        self.log_path = base / f"mlflow-server-{id(self)}.log"
        for _ in range(3):
            self.port = free_port()
            env["MLFLOW_PORT"] = str(self.port)
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(argv if self.auth else [*argv, "--port", str(self.port)], env=env,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 180
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    wait_http(f"{self.uri}/health", timeout=2)
                    return self
                except TimeoutError:
                    pass
            self.stop()
        raise RuntimeError(f"mlflow server did not start: {self.log_path.read_text()[-3000:]}")

    def create_user(self, username: str, password: str, admin: bool = False) -> None:
        """The account a sweep logs as, made by deploy/tracking/create_account.py (as the deployment
        makes it); ``admin``: one the server checks no permissions for."""
        base = self.artifacts.parent
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ACCOUNT_"))}
        env.update(MLFLOW_TRACKING_URI=self.uri, ACCOUNT_USERNAME=username, ACCOUNT_ADMIN=str(admin).lower(),
                   ACCOUNT_PASSWORD_FILE=_secret(base / f"account_{username}", password),
                   MLFLOW_AUTH_ADMIN_PASSWORD_FILE=_secret(base / "admin_password", self.admin_password))
        subprocess.run([sys.executable, str(DEPLOY / "create_account.py")], env=env, check=True, capture_output=True,
                       text=True, timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def _secret(path: Path, value: str) -> str:
    """A file holding ``value``, readable by its owner only (a mounted secret); its path."""
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return str(path)


def auth_ini(database_uri: str) -> str:
    """deploy/tracking/basic_auth.ini with the user store at ``database_uri``."""
    text = (DEPLOY / "basic_auth.ini").read_text()
    lines = [f"database_uri = {database_uri}" if ln.startswith("database_uri") else ln for ln in text.splitlines()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def tracking_server(base: Path, auth: bool = True, workers: int = 2, durable: bool = True):
    """PostgreSQL and an MLflow server on it, torn down on exit."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb); install postgresql or set SOBOLEV_PG_BIN")
    pg = Postgres(bin_dir)
    try:
        pg.start(durable=durable)
        server = MlflowServer(pg, base / "artifacts", auth=auth, workers=workers)
        try:
            yield server.start()
        finally:
            server.stop()
    finally:
        with contextlib.suppress(AttributeError):
            pg.stop()
