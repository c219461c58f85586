#!/usr/bin/env bash
# A shared MLflow tracking server with logins, on a private PostgreSQL, with served artifacts:
#   scripts/tracking-server.sh start|stop|status   (make tracking-server / tracking-server-stop)
#   scripts/tracking-server.sh user NAME [--role read|edit]   (make tracking-user NAME=… ROLE=…)
# Everything lives in $TRACKING_DIR (default .tracking/): the database cluster, the server's
# artifacts, logs, pid files, and `credentials`, made at the first start and readable by its
# owner only: the admin's login, the database's password and the key that signs UI sessions.
# MLflow listens on 127.0.0.1 unless TRACKING_HOST says otherwise, and asks every request for a
# login (MLflow's basic-auth app) whatever the host: on a shared machine every local user can
# reach a loopback port. PostgreSQL listens on 127.0.0.1 only, whatever TRACKING_HOST says (the
# MLflow server is its one client), and asks for the password (scram-sha-256), never `trust`.
# No secret is ever on a command line (`ps` shows those to every user): they go by environment.
set -euo pipefail
umask 077  # whatever is made here (runs, artifacts, logs, secrets) is its owner's alone
DIR=$(realpath -m "${TRACKING_DIR:-.tracking}")
HOST=${TRACKING_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5433}
PORT=${TRACKING_PORT:-5000}
PY=${PY:-.venv/bin/python}
CREDENTIALS="$DIR/credentials"
PGBIN=${PGBIN:-$(dirname "$(realpath "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)")")}
[ -x "$PGBIN/initdb" ] || { echo "error: PostgreSQL's initdb not found (apt-get install postgresql, or set PGBIN)" >&2; exit 2; }
DB="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT"  # the password goes as PGPASSWORD
case "$HOST" in  # the address users and workers are told
  0.0.0.0 | ::) URL="http://$(hostname -f 2>/dev/null || hostname):$PORT" ;;
  *) URL="http://$HOST:$PORT" ;;
esac

as_db_user() {  # PostgreSQL refuses to run as root: use the postgres account there
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

secret() { "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))'; }

make_credentials() {  # once: a new server's secrets, in a file only its owner can read
  [ -s "$CREDENTIALS" ] && return 1
  (
    umask 077
    cat >"$CREDENTIALS.new" <<EOF
# The tracking server's secrets, made by scripts/tracking-server.sh at its first start.
# Readable by its owner only; \`set -a; . $CREDENTIALS; set +a\` makes a shell its admin.
MLFLOW_TRACKING_USERNAME=admin
MLFLOW_TRACKING_PASSWORD=$(secret)
PGPASSWORD=$(secret)
MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret)
EOF
    mv "$CREDENTIALS.new" "$CREDENTIALS"
  )
}

load_credentials() {
  [ "$(stat -c %a "$CREDENTIALS")" = 600 ] \
    || { echo "error: $CREDENTIALS must be readable by its owner only (chmod 600 it)" >&2; exit 2; }
  set -a
  # shellcheck disable=SC1090
  . "$CREDENTIALS"
  set +a
}

private_database() {
  # The cluster exists (made here) and runs: on 127.0.0.1 only, every login by password.
  if [ ! -s "$DIR/pg/PG_VERSION" ]; then
    mkdir -p "$DIR/pg"
    local pwfile="$DIR/pg.pw"
    (umask 077; printf '%s\n' "$PGPASSWORD" >"$pwfile")
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR/pg" "$pwfile"; fi
    as_db_user "$PGBIN/initdb" -D "$DIR/pg" -U mlflow --pwfile="$pwfile" \
      --auth=scram-sha-256 -E UTF8 >"$DIR/initdb.log" || { rm -f "$pwfile"; exit 1; }
    rm -f "$pwfile"
  fi
  local options="-c listen_addresses=127.0.0.1 -c unix_socket_directories='' -p $PG_PORT"
  options+=" -c password_encryption=scram-sha-256"
  if grep -Eq '^[^#]*\btrust\b' "$DIR/pg/pg_hba.conf"; then
    # A cluster made before logins (`--auth=trust`): give its role the new password while
    # trust still lets this script in, then close it.
    as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" -w -l "$DIR/pg/server.log" -o "$options" restart \
      >/dev/null 2>&1 || as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" -w -l "$DIR/pg/server.log" \
      -o "$options" start >/dev/null
    "$PGBIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -v ON_ERROR_STOP=1 \
      <<<"ALTER ROLE mlflow PASSWORD '$PGPASSWORD';" >/dev/null  # by stdin: not in `ps`
    chmod -R go-rwx "$DIR/artifacts" "$DIR"/*.log 2>/dev/null || true  # made before umask 077
    echo "the database had no password (trust): it now asks for the one in $CREDENTIALS"
  fi
  as_db_user tee "$DIR/pg/pg_hba.conf" >/dev/null <<EOF
# scripts/tracking-server.sh: TCP from this machine's loopback only, with the password.
host all mlflow 127.0.0.1/32 scram-sha-256
EOF
  if as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" reload >/dev/null
  else
    as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" -w -l "$DIR/pg/server.log" -o "$options" start >/dev/null
  fi
  for name in mlflow mlflow_auth; do  # the runs, and who may see and change them
    "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 \
      || "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U mlflow "$name"
  done
}

start() {
  mkdir -p "$DIR/artifacts"
  # The folder is its owner's; as root, PostgreSQL's own account must pass through it to pg/.
  chmod "$([ "$(id -u)" = 0 ] && echo 711 || echo 700)" "$DIR"
  local first=0
  make_credentials && first=1
  load_credentials
  private_database
  if [ -s "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null; then
    echo "already serving: $URL"; return
  fi
  cat >"$DIR/auth.ini" <<EOF
# MLflow's basic-auth app (made by scripts/tracking-server.sh; no secret here). A user sees
# nothing until given a role: \`make tracking-user NAME=… ROLE=read|edit\`.
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = $DB/mlflow_auth
admin_username = $MLFLOW_TRACKING_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A login is checked by a deliberately slow hash (~0.4 s): remember a good one for a minute,
# or every call of a sweep pays it. A changed or deleted password may then still work for up
# to a minute on the server's other worker.
auth_cache_ttl_seconds = 60
EOF
  # The admin's password reaches MLflow by environment; it makes the admin on an empty
  # user store and is ignored after.
  # No GenAI job runner (a job runner and queue consumers this project never uses: about 2 GB);
  # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns it back on.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  MLFLOW_AUTH_CONFIG_PATH="$DIR/auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD" \
    nohup "$PY" -m mlflow server --app-name basic-auth \
    --backend-store-uri "$DB/mlflow" \
    --artifacts-destination "$DIR/artifacts" --serve-artifacts \
    --host "$HOST" --port "$PORT" --workers 2 >"$DIR/mlflow.log" 2>&1 &
  echo $! >"$DIR/mlflow.pid"
  for _ in $(seq 120); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('$URL/health', timeout=1)" 2>/dev/null; then
      echo "MLflow tracking server: $URL, with logins (PostgreSQL on 127.0.0.1:$PG_PORT, artifacts in $DIR/artifacts)"
      if [ "$first" = 1 ]; then
        echo "admin: user '$MLFLOW_TRACKING_USERNAME', password in $CREDENTIALS (readable by you only)"
        echo "  add a user:      make tracking-user NAME=alice ROLE=edit   (or ROLE=read)"
        echo "  be the admin:    set -a; . $CREDENTIALS; set +a"
      fi
      echo "each user and worker: export MLFLOW_TRACKING_URI=$URL MLFLOW_TRACKING_USERNAME=… MLFLOW_TRACKING_PASSWORD=…"
      return
    fi
    kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null || break
    sleep 1
  done
  echo "error: the MLflow server did not come up; see $DIR/mlflow.log" >&2; exit 1
}

stop() {
  if [ -s "$DIR/mlflow.pid" ]; then
    pkill -TERM -P "$(cat "$DIR/mlflow.pid")" 2>/dev/null || true
    kill "$(cat "$DIR/mlflow.pid")" 2>/dev/null || true
    rm -f "$DIR/mlflow.pid"
  fi
  if [ -d "$DIR/pg" ]; then as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" -w stop >/dev/null 2>&1 || true; fi
  echo "stopped (data kept in $DIR)"
}

user() {  # as the admin, on this machine's server
  [ -s "$CREDENTIALS" ] || { echo "error: no $CREDENTIALS: start the server first (make tracking-server)" >&2; exit 2; }
  load_credentials
  MLFLOW_TRACKING_URI="$URL" "$PY" -m experiments tracking-user "$@"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  user) shift; user "$@" ;;
  status) as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" status || true
          [ -s "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null \
            && echo "mlflow server: pid $(cat "$DIR/mlflow.pid")" || echo "mlflow server: not running" ;;
  *) echo "usage: $0 start|stop|status|user NAME [--role read|edit]" >&2; exit 2 ;;
esac
