"""Who may use the shared tracking server, and what each may do: its two roles and its users.

`make tracking-server` serves MLflow's basic-auth app, where a user with no grant sees nothing
(``default_permission = NO_PERMISSIONS``). A team gets two roles, each a grant on every
experiment (MLflow's role permissions, pattern ``*``): ``read`` (READ: see every run) and
``edit`` (EDIT: also run sweeps into every experiment). The admin runs this, with the admin's
login in the environment (`make tracking-user` reads it from the server's credentials file).
MLflow lets any signed-in user create a new experiment of their own (a server without
workspaces has no grant to withhold it); a ``read`` user cannot write to anyone else's.
"""

from __future__ import annotations

import re
import secrets

import requests

from experiments.logins import not_let_in
from experiments.stores import TrackingError, rest

ROLES = {"read": "READ", "edit": "EDIT"}  # role → its permission on every experiment
WORKSPACE = "default"  # MLflow's one workspace when workspaces are off
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def team_role(role: str) -> str:
    """The role's name on the server."""
    return f"team-{role}"


def add_user(uri: str, name: str, role: str) -> str | None:
    """User ``name`` with ``role`` (read or edit) on the server at ``uri``: created with a new
    random password, which is returned (shown once, stored nowhere here); an existing user is
    moved to ``role`` and keeps its password (None is returned)."""
    if role not in ROLES:
        raise TrackingError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not NAME.fullmatch(name):
        raise TrackingError(
            f"bad user name {name!r}: letters, digits and . _ @ -, at most 64, "
            "starting with a letter or digit"
        )
    try:
        roles = _team_roles(uri)
        password = None
        if not _exists(uri, name):
            password = secrets.token_urlsafe(18)
            rest(uri, "POST", "2.0/mlflow/users/create", {"username": name, "password": password})
        listed = rest(uri, "GET", "3.0/mlflow/users/roles/list", {"username": name})["roles"]
        held = {r["id"] for r in listed}
        for other, role_id in roles.items():
            if other != role and role_id in held:
                unassign = {"username": name, "role_id": role_id}
                rest(uri, "DELETE", "3.0/mlflow/roles/unassign", unassign)
        if roles[role] not in held:
            assign = {"username": name, "role_id": roles[role]}
            rest(uri, "POST", "3.0/mlflow/roles/assign", assign)
    except requests.HTTPError as err:
        raise TrackingError(_why(err.response.status_code, uri)) from None
    return password


def _team_roles(uri: str) -> dict[str, int]:
    """The ids of the two team roles, made with their grants the first time."""
    listed = rest(uri, "GET", "3.0/mlflow/roles/list", {"workspace": WORKSPACE})["roles"]
    found = {r["name"]: r["id"] for r in listed}
    for role, permission in ROLES.items():
        if team_role(role) not in found:
            made = rest(
                uri,
                "POST",
                "3.0/mlflow/roles/create",
                {"workspace": WORKSPACE, "name": team_role(role),
                 "description": f"{permission} on every experiment"},
            )["role"]  # fmt: skip
            grant = {"role_id": made["id"], "resource_type": "experiment",
                     "resource_pattern": "*", "permission": permission}  # fmt: skip
            rest(uri, "POST", "3.0/mlflow/roles/permissions/add", grant)
            found[team_role(role)] = made["id"]
    return {role: found[team_role(role)] for role in ROLES}


def _exists(uri: str, name: str) -> bool:
    try:
        rest(uri, "GET", "2.0/mlflow/users/get", {"username": name})
    except requests.HTTPError as err:
        if err.response.status_code == 404:
            return False
        raise
    return True


def _why(status: int, uri: str) -> str:
    """One line for a refused call: no good login, not the admin, or no logins at all."""
    if status == 401:
        return not_let_in(uri)
    if status == 403:
        return f"tracking server {uri}: only its admin adds users (set -a; . .tracking/credentials)"
    if status in (404, 405):
        return f"tracking server {uri} has no logins (start it with `make tracking-server`)"
    return f"tracking server {uri} answered {status} to adding a user"
