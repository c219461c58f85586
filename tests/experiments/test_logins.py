"""A tracking server that lets in only its team, and no secret written anywhere.

Without a server: a URI with a password is refused (redacted), and the one-line messages name
the environment variables, never their values. With a real `mlflow server` running MLflow's
basic-auth app on loopback as `make tracking-server` configures it (`slow`): every way in
without a good login gets 401; no login, a wrong password and a READ-only user each exit 2 with
nothing written; a sweep with a login runs, and afterwards neither the store, its artifacts, the
report nor anything printed holds the password. The `cluster` test checks the real script's
server (PostgreSQL included) that `.ci/run` starts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from experiments.cli import CONFIGS, run
from experiments.logins import not_let_in, redact
from experiments.stores import TrackingError, resolve_uri

QUICK = str(CONFIGS / "quick.yaml")
SECRET = "Pw-4-test-0nly-xyz"


# --- no server needed --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uri",
    [
        f"http://alice:{SECRET}@127.0.0.1:5000",
        f"https://alice:{SECRET}@mlflow.example.org",
        f"postgresql+psycopg2://mlflow:{SECRET}@127.0.0.1:5433/mlflow",
    ],
)
def test_a_uri_with_a_password_is_refused_and_shown_redacted(uri, capsys, monkeypatch):
    with pytest.raises(TrackingError) as refused:
        resolve_uri(uri)
    assert SECRET not in str(refused.value)
    assert re.sub(r"//(\w+):[^@]*@", r"//\1:***@", uri) == redact(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the same from the environment
    assert run(["sweep", QUICK, "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and SECRET not in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and ":***@" in captured.err
    expected = "MLFLOW_TRACKING_PASSWORD" if uri.startswith("http") else "PGPASSWORD"
    assert expected in captured.err


def test_a_uri_without_a_password_passes_unchanged():
    for uri in ("sqlite:///x.db", "http://127.0.0.1:5000", "postgresql://mlflow@db:5432/m"):
        assert resolve_uri(uri) == uri and redact(uri) == uri


def test_what_a_401_means_names_the_variables_never_their_values(monkeypatch):
    for name in ("USERNAME", "PASSWORD", "TOKEN"):
        monkeypatch.delenv(f"MLFLOW_TRACKING_{name}", raising=False)
    assert "asks for a login: set MLFLOW_TRACKING_USERNAME" in not_let_in("http://h")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    said = not_let_in("http://h")
    assert "refused the login of user 'alice'" in said and SECRET not in said


def test_users_live_on_a_server(capsys):
    assert run(["tracking-user", "alice", "--tracking-uri", "sqlite:///x.db"]) == 2
    assert "is not a tracking server" in capsys.readouterr().err


# --- a real server with logins (slow) ----------------------------------------------------------
def login(user: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def environment(env: dict[str, str]) -> dict[str, str]:
    """This process's environment with exactly the login ``env`` (none: no login at all)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**clean, **env}


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m experiments ARGS` in a process of its own with exactly this login."""
    command = [sys.executable, "-m", "experiments", *args]
    return subprocess.run(command, env=environment(env), capture_output=True, text=True)


def call(uri: str, method: str, path: str, headers: dict | None = None) -> int:
    """The HTTP status a request gets."""
    body = b"{}" if method == "POST" else None
    asked = urllib.request.Request(f"{uri}{path}", data=body, method=method, headers=headers or {})
    asked.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(asked, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def written(folder: Path) -> dict[str, object]:
    """What the server's store holds: rows of each table that a sweep writes, and the files
    under its artifacts."""
    with sqlite3.connect(folder / "server.db") as db:
        tables = ["experiments", "runs", "tags", "params", "metrics", "inputs", "datasets"]
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    files = sorted(str(p) for p in (folder / "artifacts").rglob("*") if p.is_file())
    return {**counts, "files": files}


@pytest.fixture(scope="module")
def team(tmp_path_factory, free_port, mlflow_server):
    """A server with logins, as `make tracking-server` configures it; alice (edit) and bob
    (read) added by `experiments tracking-user`, carol with no role; the experiment 'quick'
    made by the admin, so bob's refusal is about writing to it, not about making it."""
    server = mlflow_server(tmp_path_factory.mktemp("logins"), free_port(), logins=True)
    server.start()
    try:
        logins = {}
        for name, role in (("alice", "edit"), ("bob", "read")):
            made = cli(["tracking-user", name, "--role", role, "--tracking-uri", server.uri],
                       server.ADMIN)  # fmt: skip
            assert made.returncode == 0, made.stderr
            logins[name] = login(name, re.search(r"MLFLOW_TRACKING_PASSWORD=(\S+)", made.stdout)[1])
        logins["carol"] = login("carol", SECRET)
        admin = basic(*server.ADMIN.values())
        for path, body in [
            ("/api/2.0/mlflow/users/create", {"username": "carol", "password": SECRET}),
            ("/api/2.0/mlflow/experiments/create", {"name": "quick"}),
        ]:
            asked = urllib.request.Request(
                f"{server.uri}{path}", data=json.dumps(body).encode(), method="POST",
                headers={**admin, "Content-Type": "application/json"},
            )  # fmt: skip
            urllib.request.urlopen(asked, timeout=10).close()
        yield server, logins
    finally:
        server.stop()


WAYS_IN = [  # (method, path): reading, writing, the UI's own API, artifacts, users
    ("GET", "/api/2.0/mlflow/experiments/search?max_results=10"),
    ("POST", "/api/2.0/mlflow/experiments/create"),
    ("POST", "/api/2.0/mlflow/runs/search"),
    ("POST", "/api/2.0/mlflow/runs/create"),
    ("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=10"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts"),
    ("GET", "/get-artifact?path=runs.csv&run_uuid=0"),
    ("POST", "/api/2.0/mlflow/users/create"),
    ("GET", "/graphql?query=%7Bexperiments%7D"),
    ("GET", "/"),
]


@pytest.mark.slow
@pytest.mark.parametrize("method,path", WAYS_IN)
def test_every_way_in_without_a_good_login_is_refused(team, method, path):
    server, _ = team
    assert call(server.uri, "GET", "/health") == 200  # all it says: the server is up
    assert call(server.uri, method, path) == 401
    assert call(server.uri, method, path, basic("alice", "not-her-password")) == 401
    assert call(server.uri, method, path, basic("mallory", SECRET)) == 401
    assert call(server.uri, method, path, {"Authorization": "Basic bm90LWJhc2U2NA"}) == 401


@pytest.mark.slow
@pytest.mark.parametrize(
    "who,expected",
    [
        (None, "asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        ("wrong", "refused the login of user 'alice' (MLFLOW_TRACKING_USERNAME): wrong password"),
        ("bob", "user 'bob' may not write runs to experiment 'quick'"),
        ("carol", "denied user 'carol'"),
    ],
)
def test_no_login_a_wrong_one_or_a_reader_is_one_line_and_nothing_written(team, who, expected):
    server, logins = team
    env = {}
    if who == "wrong":
        env = login("alice", SECRET)
    elif who is not None:
        env = logins[who]
    before = written(server.folder)
    done = cli(["sweep", QUICK, "--tracking-uri", server.uri, "--set", "steps=50", "--quiet"], env)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert expected in done.stderr and SECRET not in done.stderr
    if env:
        assert env["MLFLOW_TRACKING_PASSWORD"] not in done.stderr
    assert written(server.folder) == before


@pytest.mark.slow
def test_a_sweep_with_a_login_runs_and_leaves_its_password_nowhere(team, tmp_path):
    server, logins = team
    alice = logins["alice"]
    swept = cli(["sweep", QUICK, "--tracking-uri", server.uri, "--set", "steps=50"], alice)
    assert swept.returncode == 0, swept.stderr
    assert "12 finished" in swept.stdout
    report = subprocess.run(
        [sys.executable, "-m", "analysis", "report", "--experiment", "quick",
         "--tracking-uri", server.uri, "--out", str(tmp_path / "report")],
        env=environment(alice), capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    password = alice["MLFLOW_TRACKING_PASSWORD"]
    needles = [password, base64.b64encode(f"alice:{password}".encode()).decode()]
    needles = [n.encode() for n in needles]
    said = (swept.stdout + swept.stderr + report.stdout + report.stderr).encode()
    assert not any(n in said for n in needles)
    searched = [p for p in [*server.folder.rglob("*"), *tmp_path.rglob("*")] if p.is_file()]
    assert any(p.name == "runs.csv" for p in searched) and any(
        p.suffix == ".html" for p in searched
    )
    holding = [str(p) for p in searched if any(n in p.read_bytes() for n in needles)]
    assert holding == []  # the store, its artifacts, the report, the server's log


@pytest.mark.slow
def test_a_user_is_added_once_and_moved_between_roles(team):
    server, logins = team
    admin = server.ADMIN
    made = cli(["tracking-user", "dave", "--role", "read", "--tracking-uri", server.uri], admin)
    assert made.returncode == 0 and "MLFLOW_TRACKING_PASSWORD=" in made.stdout
    moved = cli(["tracking-user", "dave", "--role", "edit", "--tracking-uri", server.uri], admin)
    assert moved.returncode == 0 and "password is unchanged" in moved.stdout
    assert "MLFLOW_TRACKING_PASSWORD" not in moved.stdout
    refused = cli(["tracking-user", "eve", "--tracking-uri", server.uri], logins["alice"])
    assert refused.returncode == 2 and "only its admin adds users" in refused.stderr


@pytest.mark.slow
def test_a_dask_worker_logs_in_with_its_own_environment(team, free_port, distributed):
    """The driver's login is not sent to the workers: a worker started without one is named
    in one line (exit 2, nothing written); one started with its own login runs the sweep."""
    server, logins = team
    dask = Path(sys.executable).parent / "dask"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=environment({}), **quiet,
    )  # fmt: skip
    workers = []

    def worker(env):
        command = [dask, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
        workers.append(subprocess.Popen(command, env=environment(env), **quiet))

    args = ["sweep", QUICK, "--engine", "dask", "--address", address, "--tracking-uri"]
    args += [server.uri, "--experiment", "on-dask", "--set", "steps=50", "--quiet"]
    try:
        worker({})
        wait_for_workers(address, 1)
        before = written(server.folder)
        refused = cli(args, logins["alice"])
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert re.match(r"error: dask worker tcp://\S+: tracking server \S+ asks for a login",
                        refused.stderr)  # fmt: skip
        assert written(server.folder) == before
        workers.pop().terminate()
        worker(logins["alice"])
        wait_for_workers(address, 1)
        swept = cli(args, logins["alice"])
        assert swept.returncode == 0 and "12 finished" in swept.stdout, swept.stderr
    finally:
        for process in [*workers, scheduler]:
            process.terminate()
            process.wait(timeout=30)


def wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(n, timeout=60)
        while len(client.scheduler_info()["workers"]) != n:  # the one stopped has left
            client.wait_for_workers(n, timeout=60)


# --- the real script's server, which .ci/run starts --------------------------------------------
@pytest.mark.cluster
def test_the_shared_server_and_its_database_let_in_only_its_team():
    folder = os.environ.get("TRACKING_DIR")
    uri = os.environ.get("CLUSTER_TRACKING_URI")
    if not folder or not uri:
        if os.environ.get("REQUIRE_CLUSTER") == "1":
            pytest.fail("REQUIRE_CLUSTER=1 but TRACKING_DIR or CLUSTER_TRACKING_URI not set")
        pytest.skip("no shared server: .ci/run starts one (scripts/tracking-server.sh)")
    folder = Path(folder)
    credentials = folder / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    secrets = dict(
        line.split("=", 1) for line in credentials.read_text().splitlines() if "=" in line
        and not line.startswith("#")
    )  # fmt: skip
    assert set(secrets) >= {"MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"}
    hidden = [v for k, v in secrets.items() if k != "MLFLOW_TRACKING_USERNAME"]
    assert not any(v in (folder / "auth.ini").read_text() for v in hidden)
    for method, path in WAYS_IN:
        assert call(uri, method, path) == 401, path
    assert (
        call(uri, "GET", WAYS_IN[0][1], basic("admin", secrets["MLFLOW_TRACKING_PASSWORD"])) == 200
    )
    # The database: loopback only, a password asked of every login, never `trust`.
    import psycopg2

    port = int(os.environ.get("PG_PORT", "5433"))
    for password in ("", "wrong"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="mlflow",
                             password=password, connect_timeout=5)  # fmt: skip
    psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="mlflow",
                     password=secrets["PGPASSWORD"], connect_timeout=5).close()  # fmt: skip
    hba = (folder / "pg" / "pg_hba.conf").read_text()
    assert "trust" not in re.sub(r"#.*", "", hba)
    outside = _an_address_that_is_not_loopback()
    if outside is not None:
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=5).close()


def _an_address_that_is_not_loopback() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: the route names our address
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
