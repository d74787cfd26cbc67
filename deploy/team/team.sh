#!/usr/bin/env bash
# The team deployment on one Debian machine: a real PostgreSQL (Dagster's run, event-log and
# schedule storage; Feast's SQL registry) and a real Redis (Feast's online store) on loopback,
# then dagster-daemon (run queue, schedules, sensors) and dagster-webserver against them.
#
#   deploy/team/team.sh up | down | status        (make team-up / team-down / team-status)
#
# Idempotent: `up` starts only what is not running and keeps every database and file; `down`
# stops everything it started and keeps the data (rm -r "$TEAM_DIR" to forget it).
# Settings (environment, with defaults):
#   TEAM_DIR                 .team/ in the checkout: servers' data, logs, pid files, team.env
#   LUNGJEPA_PG_PORT 55432, LUNGJEPA_REDIS_PORT 56379, LUNGJEPA_UI_PORT 3001 (all 127.0.0.1)
#   LUNGJEPA_PG_PASSWORD, LUNGJEPA_REDIS_PASSWORD  taken when set, else kept from team.env,
#                            else generated; they live in $TEAM_DIR/team.env (mode 600), never
#                            in the repository
#   LUNGJEPA_DVC_REMOTE      the team's DVC remote (a shared folder, s3://..., ssh://...);
#                            default $TEAM_DIR/dvc-remote; set as this checkout's default
#                            remote in .dvc/config.local (not committed)
#   LUNGJEPA_PROFILE, LUNGJEPA_ROOT  passed on to every Dagster process (params profile; a
#                            folder for data/, artifacts/, metrics/ outside the checkout)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"  # the code location is this checkout's
TEAM_DIR=${TEAM_DIR:-$REPO/.team}
BIN=${VENV_BIN:-$REPO/.venv/bin}
ENV_FILE=$TEAM_DIR/team.env
PG_PORT=${LUNGJEPA_PG_PORT:-55432}
REDIS_PORT=${LUNGJEPA_REDIS_PORT:-56379}
UI_PORT=${LUNGJEPA_UI_PORT:-3001}
PG_USER=lungjepa
PG_DATA=$TEAM_DIR/postgres/data
LOGS=$TEAM_DIR/logs
RUN=$TEAM_DIR/run

say() { echo "team: $*"; }
die() { echo "team: $*" >&2; exit 1; }

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $dir && -x $dir/initdb ]] || die "PostgreSQL not found (make system-deps-team installs it)"
  echo "$dir"
}

# PostgreSQL refuses to run as root: as root, its files belong to (and it runs as) `postgres`.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

secret() { "$BIN/python" -c "import secrets; print(secrets.token_hex(24))"; }

load_env() { [[ -f $ENV_FILE ]] && { set -a; . "$ENV_FILE"; set +a; }; return 0; }

write_env() {
  local pg_pw=$1 redis_pw=$2 project
  project=$(LUNGJEPA_FEAST_REGISTRY_URL=sql "$BIN/python" -c "
from feature_repo.store import StoreBackends
from orchestration.params import resolve_path, section
print(StoreBackends.from_env().project(resolve_path(section('paths')['data'])))")
  umask 077
  cat >"$ENV_FILE.tmp" <<EOF
# written by deploy/team/team.sh: credentials of this machine's team deployment (keep private)
DAGSTER_HOME=$TEAM_DIR/dagster_home
LUNGJEPA_PG_HOST=127.0.0.1
LUNGJEPA_PG_PORT=$PG_PORT
LUNGJEPA_PG_USER=$PG_USER
LUNGJEPA_PG_PASSWORD=$pg_pw
LUNGJEPA_PG_DAGSTER_DB=dagster
LUNGJEPA_REDIS_PORT=$REDIS_PORT
LUNGJEPA_REDIS_PASSWORD=$redis_pw
LUNGJEPA_UI_PORT=$UI_PORT
LUNGJEPA_FEAST_REGISTRY_URL=postgresql+psycopg://$PG_USER:$pg_pw@127.0.0.1:$PG_PORT/feast
LUNGJEPA_FEAST_REDIS=127.0.0.1:$REDIS_PORT,password=$redis_pw
LUNGJEPA_FEAST_PROJECT=$project
${LUNGJEPA_PROFILE:+LUNGJEPA_PROFILE=$LUNGJEPA_PROFILE}
${LUNGJEPA_ROOT:+LUNGJEPA_ROOT=$LUNGJEPA_ROOT}
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

start_postgres() {
  local bin pwfile
  bin=$(pg_bin)
  mkdir -p "$TEAM_DIR/postgres" "$LOGS"
  [[ $(id -u) -eq 0 ]] && chown postgres "$TEAM_DIR/postgres" "$LOGS"
  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    pwfile=$TEAM_DIR/postgres/.pwfile
    (umask 077; echo "$LUNGJEPA_PG_PASSWORD" >"$pwfile")
    [[ $(id -u) -eq 0 ]] && chown postgres "$pwfile"
    as_pg "$bin/initdb" -D "$PG_DATA" -U "$PG_USER" --auth=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 >"$LOGS/initdb.log"
    rm -f "$pwfile"
    say "PostgreSQL cluster created in $PG_DATA"
  fi
  if as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$LOGS/postgres.log" -w -t 60 start \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $TEAM_DIR/postgres" >/dev/null
    say "PostgreSQL started on 127.0.0.1:$PG_PORT (log $LOGS/postgres.log)"
  fi
  for db in dagster feast; do
    PGPASSWORD=$LUNGJEPA_PG_PASSWORD "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" \
      -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      PGPASSWORD=$LUNGJEPA_PG_PASSWORD "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" \
        -U "$PG_USER" "$db"
  done
}

start_redis() {
  mkdir -p "$TEAM_DIR/redis" "$LOGS"
  (umask 077; cat >"$TEAM_DIR/redis/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
requirepass $LUNGJEPA_REDIS_PASSWORD
dir $TEAM_DIR/redis
pidfile $TEAM_DIR/redis/redis.pid
logfile $LOGS/redis.log
daemonize yes
EOF
  )
  if alive "$TEAM_DIR/redis/redis.pid"; then
    say "Redis already running on 127.0.0.1:$REDIS_PORT"
  else
    redis-server "$TEAM_DIR/redis/redis.conf"
    for _ in $(seq 50); do
      REDISCLI_AUTH=$LUNGJEPA_REDIS_PASSWORD redis-cli -p "$REDIS_PORT" ping 2>/dev/null |
        grep -q PONG && break
      sleep 0.2
    done
    say "Redis started on 127.0.0.1:$REDIS_PORT (log $LOGS/redis.log)"
  fi
}

start_dagster() {
  mkdir -p "$DAGSTER_HOME" "$RUN" "$LOGS"
  cp "$REPO/deploy/team/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
  # every pool explicitly (gpu: one JEPA or finetuning step at a time across all runs)
  "$BIN/python" "$REPO/deploy/team/pools.py"
  local workspace=$REPO/deploy/team/workspace.yaml
  # detached from this shell's stdin/stdout (make returns; a pipe reading us sees EOF)
  if alive "$RUN/daemon.pid"; then
    say "dagster-daemon already running"
  else
    nohup "$BIN/dagster-daemon" run -w "$workspace" </dev/null >"$LOGS/daemon.log" 2>&1 &
    echo $! >"$RUN/daemon.pid"
    say "dagster-daemon started (run queue, schedules, sensors; log $LOGS/daemon.log)"
  fi
  if alive "$RUN/webserver.pid"; then
    say "dagster-webserver already running"
  else
    nohup "$BIN/dagster-webserver" -w "$workspace" -h 127.0.0.1 -p "$UI_PORT" \
      </dev/null >"$LOGS/webserver.log" 2>&1 &
    echo $! >"$RUN/webserver.pid"
    say "dagster-webserver started (log $LOGS/webserver.log)"
  fi
  for _ in $(seq 180); do
    "$BIN/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$UI_PORT/server_info', timeout=2)" \
      2>/dev/null && return 0
    alive "$RUN/webserver.pid" || die "dagster-webserver exited; see $LOGS/webserver.log"
    sleep 1
  done
  die "dagster-webserver did not answer on 127.0.0.1:$UI_PORT within 180 s; see $LOGS/webserver.log"
}

set_dvc_remote() {
  [[ ${TEAM_DVC_REMOTE:-1} == 0 ]] && return 0  # make test-team: leave the checkout's DVC alone
  local url=${LUNGJEPA_DVC_REMOTE:-$TEAM_DIR/dvc-remote}
  [[ $url == *://* ]] || mkdir -p "$url"
  "$BIN/dvc" remote add --local --default --force team "$url" >/dev/null
  say "DVC remote 'team' -> $url (default for this checkout: .dvc/config.local)"
}

stop_pid() {  # name pidfile
  if alive "$2"; then
    kill "$(cat "$2")"
    for _ in $(seq 100); do alive "$2" || break; sleep 0.2; done
    alive "$2" && kill -9 "$(cat "$2")"
    say "$1 stopped"
  fi
  rm -f "$2"
}

up() {
  bash "$REPO/scripts/system-deps.sh" team
  mkdir -p "$TEAM_DIR"
  local pg_pw=${LUNGJEPA_PG_PASSWORD:-} redis_pw=${LUNGJEPA_REDIS_PASSWORD:-}
  if [[ -f $ENV_FILE ]]; then
    pg_pw=${pg_pw:-$(sed -n 's/^LUNGJEPA_PG_PASSWORD=//p' "$ENV_FILE")}
    redis_pw=${redis_pw:-$(sed -n 's/^LUNGJEPA_REDIS_PASSWORD=//p' "$ENV_FILE")}
  fi
  pg_pw=${pg_pw:-$(secret)}
  redis_pw=${redis_pw:-$(secret)}
  write_env "$pg_pw" "$redis_pw"
  load_env
  start_postgres
  start_redis
  start_dagster
  set_dvc_remote
  cat <<EOF
team: up. Dagster UI  http://127.0.0.1:$UI_PORT  (runs queue; the daemon launches them)
team:     PostgreSQL  127.0.0.1:$PG_PORT  databases dagster (runs, events, schedules), feast (registry)
team:     Redis       127.0.0.1:$REDIS_PORT  Feast online store
team:     settings    $ENV_FILE  (private: credentials). In a shell: set -a; . $ENV_FILE; set +a
team: stop with  make team-down  (data kept in $TEAM_DIR)
EOF
}

down() {
  load_env
  stop_pid dagster-webserver "$RUN/webserver.pid"
  stop_pid dagster-daemon "$RUN/daemon.pid"
  if alive "$TEAM_DIR/redis/redis.pid"; then
    REDISCLI_AUTH=${LUNGJEPA_REDIS_PASSWORD:-} redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 ||
      kill "$(cat "$TEAM_DIR/redis/redis.pid")"
    for _ in $(seq 50); do alive "$TEAM_DIR/redis/redis.pid" || break; sleep 0.2; done
    say "Redis stopped"
  fi
  if [[ -f $PG_DATA/PG_VERSION ]] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
    say "PostgreSQL stopped"
  fi
  say "down (data kept in $TEAM_DIR)"
}

status() {
  load_env
  local bin
  bin=$(pg_bin)
  if [[ -f $PG_DATA/PG_VERSION ]] && as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    say "PostgreSQL running on 127.0.0.1:$PG_PORT"
  else say "PostgreSQL stopped"; fi
  if alive "$TEAM_DIR/redis/redis.pid"; then say "Redis running on 127.0.0.1:$REDIS_PORT"
  else say "Redis stopped"; fi
  for name in daemon webserver; do
    if alive "$RUN/$name.pid"; then say "dagster-$name running (pid $(cat "$RUN/$name.pid"))"
    else say "dagster-$name stopped"; fi
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
