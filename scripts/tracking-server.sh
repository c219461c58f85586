#!/usr/bin/env bash
# A shared MLflow tracking server backed by PostgreSQL, with a served artifact store:
#   scripts/tracking-server.sh start|stop|status   (make tracking-server / tracking-server-stop)
# Everything lives in $TRACKING_DIR (default .tracking/): the database cluster, the server's
# artifacts, logs and pid files. Both listen on 127.0.0.1 only unless TRACKING_HOST says
# otherwise. Workers then need only MLFLOW_TRACKING_URI=http://HOST:PORT.
set -euo pipefail
DIR=$(realpath -m "${TRACKING_DIR:-.tracking}")
HOST=${TRACKING_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5433}
PORT=${TRACKING_PORT:-5000}
PY=${PY:-.venv/bin/python}
PGBIN=${PGBIN:-$(dirname "$(realpath "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)")")}
[ -x "$PGBIN/initdb" ] || { echo "error: PostgreSQL's initdb not found (apt-get install postgresql, or set PGBIN)" >&2; exit 2; }

as_db_user() {  # PostgreSQL refuses to run as root: use the postgres account there
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  mkdir -p "$DIR/artifacts"
  if [ ! -s "$DIR/pg/PG_VERSION" ]; then
    mkdir -p "$DIR/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR/pg"
    as_db_user "$PGBIN/initdb" -D "$DIR/pg" -U mlflow --auth=trust -E UTF8 >"$DIR/initdb.log"
  fi
  if ! as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" -w -l "$DIR/pg/server.log" \
      -o "-h $HOST -p $PG_PORT -k /tmp" start >/dev/null
  fi
  "$PGBIN/psql" -h "$HOST" -p "$PG_PORT" -U mlflow -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1 \
    || "$PGBIN/createdb" -h "$HOST" -p "$PG_PORT" -U mlflow mlflow
  if [ -s "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null; then
    echo "already serving: http://$HOST:$PORT"; return
  fi
  nohup "$PY" -m mlflow server \
    --backend-store-uri "postgresql+psycopg2://mlflow@$HOST:$PG_PORT/mlflow" \
    --artifacts-destination "$DIR/artifacts" --serve-artifacts \
    --host "$HOST" --port "$PORT" --workers 2 >"$DIR/mlflow.log" 2>&1 &
  echo $! >"$DIR/mlflow.pid"
  for _ in $(seq 120); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://$HOST:$PORT/health', timeout=1)" 2>/dev/null; then
      echo "MLflow tracking server: http://$HOST:$PORT (PostgreSQL on $HOST:$PG_PORT, artifacts in $DIR/artifacts)"
      echo "workers: export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
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

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) as_db_user "$PGBIN/pg_ctl" -D "$DIR/pg" status || true
          [ -s "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null \
            && echo "mlflow server: pid $(cat "$DIR/mlflow.pid")" || echo "mlflow server: not running" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
