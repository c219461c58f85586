"""A real `mlflow server` on a loopback port, for the tests of drivers against a server and of
logins: plain, or with MLflow's basic-auth app as `make tracking-server` serves it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest


class Server:
    """`mlflow server` on a SQLite file and a loopback port, stopped and started again on the
    same port and data (an outage), as a team's tracking server would be. With ``logins``, the
    basic-auth app configured as scripts/tracking-server.sh does (no grant without a role), its
    admin's login in ``ADMIN``."""

    ADMIN: ClassVar[dict[str, str]] = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "Adm1n-not-real-0",
    }

    def __init__(self, folder: Path, port: int, logins: bool = False) -> None:
        self.folder, self.port, self.logins = folder, port, logins
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        if self.logins:
            config = self.folder / "auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                f"database_uri = sqlite:///{self.folder / 'auth.db'}\n"
                f"admin_username = {self.ADMIN['MLFLOW_TRACKING_USERNAME']}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "auth_cache_ttl_seconds = 60\n"
            )
            command += ["--app-name", "basic-auth"]
            env |= {
                "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.ADMIN["MLFLOW_TRACKING_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-key",
            }
        log = open(self.folder / "server.log", "a")  # noqa: SIM115 - the server keeps it
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while not _healthy(self.uri):
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the tracking server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its worker
            self.process.wait(timeout=30)


def _healthy(uri: str) -> bool:
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def server(tmp_path, free_port):
    server = Server(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server() -> type[Server]:
    """:class:`Server` itself, for a module's own (a test module cannot import a conftest)."""
    return Server
