"""The login a client sends to a tracking server, and what a refusal says, in one line.

A login travels only by environment (``MLFLOW_TRACKING_USERNAME`` and ``_PASSWORD``, or
``_TOKEN``), as MLflow's client reads it: never in a URI, a task or anything written. Every
message here names the variables, never their values. :mod:`experiments.tracking` raises them.
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse


def redact(uri: str) -> str:
    """``http://alice:***@host``: the URI with its password, if any, hidden."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def password_in(uri: str) -> str | None:
    """Why a URI with a password is refused (None if it has none): a URI is echoed in progress
    lines, errors and a run's reproduce command, and sent to every worker, so a password in it
    would be written down. Passwords go by environment."""
    if urllib.parse.urlsplit(uri).password is None:
        return None
    where = (
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        if uri.startswith(("http://", "https://"))
        else "PGPASSWORD or ~/.pgpass (PostgreSQL), or your database's own variable"
    )
    return (
        f"tracking URI {redact(uri)} carries a password: leave it out and give it as {where}, "
        "which the driver and every worker read from their own environment"
    )


def headers() -> dict[str, str]:
    """The login MLflow's client sends (user and password, else a token), for the calls made
    here before MLflow is imported."""
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    return {}


def not_let_in(uri: str) -> str:
    """Why a server answered 401, in words that name the variables, never their values."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return (
            f"tracking server {uri} refused the login of user {user!r} "
            "(MLFLOW_TRACKING_USERNAME): wrong password (MLFLOW_TRACKING_PASSWORD), or no such user"
        )
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):  # what headers() sent without both
        return f"tracking server {uri} refused the token in MLFLOW_TRACKING_TOKEN"
    return (
        f"tracking server {uri} asks for a login: set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (its admin adds users: make tracking-user NAME=…)"
    )


def refusal(err: BaseException, uri: str, call: str) -> str | None:
    """What a server's 401 (no good login) or 403 (a user without the permission) means,
    in one line; None for any other error."""
    code = re.search(r"failed with error code (40[13]) ", str(err))
    if code is None:
        return None
    if code[1] == "401":
        return not_let_in(uri)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this login")
    return (
        f"tracking server {uri} denied user {user!r} the call {call!r}: it lacks the "
        "permission (its admin grants it: make tracking-user NAME=… ROLE=edit)"
    )
