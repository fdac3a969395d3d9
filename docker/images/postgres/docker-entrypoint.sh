#!/usr/bin/env bash
# The official postgres image's entrypoint, in short: on an empty data
# directory, initdb with POSTGRES_USER/POSTGRES_PASSWORD, a server on the
# unix socket only runs /docker-entrypoint-initdb.d/ and creates POSTGRES_DB,
# then stops; then the real server starts, listening on every interface.
set -Eeuo pipefail

# `docker run postgres -c fsync=off`: options for the server.
if [[ "${1:0:1}" == '-' ]]; then
  set -- postgres "$@"
fi

if [[ "$1" != postgres ]]; then
  exec "$@"
fi

# As root: own the data directory, then run as the postgres user.
if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

# As the official image's file_env: a variable, or the file its `_FILE`
# twin names (compose's secrets and volumes), not both.
for var in POSTGRES_PASSWORD POSTGRES_USER POSTGRES_DB; do
  file_var="${var}_FILE"
  if [[ -n "${!var-}" && -n "${!file_var-}" ]]; then
    echo >&2 "error: both $var and $file_var are set (but are exclusive)"
    exit 1
  fi
  if [[ -n "${!file_var-}" ]]; then
    export "$var"="$(< "${!file_var}")"
  fi
  unset "$file_var"
done

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export POSTGRES_USER POSTGRES_DB

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD-}" && "${POSTGRES_HOST_AUTH_METHOD-}" != trust ]]; then
    cat >&2 <<'MSG'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       To allow all connections without a password, set
       POSTGRES_HOST_AUTH_METHOD=trust (not recommended).
MSG
    exit 1
  fi

  # The password reaches initdb through a file descriptor, never argv.
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD-}") \
    ${POSTGRES_INITDB_ARGS-}

  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

  # The init server: its unix socket only, so nothing outside the container
  # (a health check over TCP included) sees a server before the init scripts
  # have run.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start

  psql_init=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [[ "$POSTGRES_DB" != postgres ]]; then
    "${psql_init[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  echo
  shopt -s nullglob
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [[ -x "$f" ]]; then
          echo "$0: running $f"; "$f"
        else
          echo "$0: sourcing $f"; . "$f"
        fi
        ;;
      *.sql) echo "$0: running $f"; "${psql_init[@]}" --dbname "$POSTGRES_DB" -f "$f"; echo ;;
      *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql_init[@]}" --dbname "$POSTGRES_DB"; echo ;;
      *) echo "$0: ignoring $f" ;;
    esac
  done

  pg_ctl -D "$PGDATA" -m fast -w stop
  echo
  echo 'PostgreSQL init process complete; ready for start up.'
  echo
else
  echo
  echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
  echo
fi

exec "$@"
