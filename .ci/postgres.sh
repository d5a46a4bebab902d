# Sourced by .ci/run: a throw-away PostgreSQL server on 127.0.0.1, owned by an unprivileged user, in a temporary
# directory; exports KDZERO_TEST_POSTGRES_URL for the multi-worker tests and stops the server on exit.
# Installs the PostgreSQL server (Debian's packages) when it is missing. Python packages, the database driver
# included, come from the README's install command alone (the `test` extra holds psycopg 3).

pg_bin=""
for dir in /usr/lib/postgresql/*/bin; do
  [ -x "$dir/initdb" ] && pg_bin="$dir"
done
if [ -z "$pg_bin" ]; then
  echo "ci: installing PostgreSQL from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && pg_bin="$dir"
  done
fi

pg_user=kdzeropg
if [ "$(id -u)" -eq 0 ]; then
  id "$pg_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
  as_pg() { runuser -u "$pg_user" -- "$@"; }
else
  pg_user="$(id -un)"
  as_pg() { "$@"; }
fi
pg_dir="$(mktemp -d /tmp/kdzero-pg.XXXXXX)"
chown "$pg_user" "$pg_dir" 2>/dev/null || true
pg_port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U kdzero --auth=trust >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
  -o "-h 127.0.0.1 -p $pg_port -k $pg_dir -c max_connections=200" start >/dev/null
as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U kdzero kdzero
export KDZERO_TEST_POSTGRES_URL="postgresql://kdzero@127.0.0.1:$pg_port/kdzero"
trap 'as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1; rm -rf "$pg_dir"' EXIT
echo "ci: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') at 127.0.0.1:$pg_port"
