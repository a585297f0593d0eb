#!/usr/bin/env bash
# Starts and stops a private MariaDB server for tests, kept entirely inside one folder: its data,
# socket, pid file, log and the URL it printed. It never installs anything (the test script
# installs `mariadb-server`) and never reads the machine's my.cnf (`--no-defaults` everywhere).
#
#   scripts/mariadb.sh start DIR   initialise DIR if empty, start mariadbd on a free 127.0.0.1
#                                  port, create database iceprod_test and a TCP user, and print
#                                  mysql://USER:PASS@127.0.0.1:PORT/iceprod_test on stdout
#                                  (again the same URL if DIR's server is already running;
#                                  after a stop, the same port and password when the port is
#                                  still free, so clients holding the URL reconnect)
#   scripts/mariadb.sh stop DIR    stop DIR's server and wait until it is gone
#
# Must run as root (mariadbd --user=root; root logs in over the socket only). Everything else
# goes to stderr, so `url=$(scripts/mariadb.sh start DIR)` captures just the URL.
set -euo pipefail
# shellcheck source=scripts/service-lib.sh
. "$(dirname "$0")/service-lib.sh"

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
command=$1
dir=$(realpath -m "$2")
data=$dir/data
socket=$dir/mysqld.sock
pidfile=$dir/mysqld.pid
log=$dir/mysqld.log
urlfile=$dir/url
portfile=$dir/port
passwordfile=$dir/password
user=iceprod
database=iceprod_test

server_pid() {
  pid_in "$pidfile"
}

root_sql() {
  mariadb --no-defaults --socket="$socket" -uroot --batch -e "$1"
}

# A port nothing listens on now (the last one used, if free). mariadbd may still lose a race
# for it; start() then retries.
free_port() {
  local port
  port=$(cat "$portfile" 2>/dev/null || true)
  if [ -n "$port" ] && port_is_free "$port"; then
    echo "$port"
    return 0
  fi
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    if port_is_free "$port"; then
      echo "$port"
      return 0
    fi
  done
  echo "mariadb.sh: found no free port" >&2
  return 1
}

# Starts mariadbd on $1 and waits (bounded) until it answers; fails if it died or never answered.
launch() {
  local port=$1 pid
  rm -f "$pidfile"
  # setsid: the server outlives this script and the terminal's signals.
  setsid mariadbd --no-defaults --datadir="$data" --socket="$socket" --port="$port" \
    --bind-address=127.0.0.1 --user=root --skip-log-bin --skip-name-resolve \
    --pid-file="$pidfile" --log-error="$log" </dev/null >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    if mariadb-admin --no-defaults --socket="$socket" -uroot ping >/dev/null 2>&1; then
      return 0
    fi
    alive "$pid" || return 1
    sleep 0.1
  done
  echo "mariadb.sh: mariadbd did not answer within 30 s; see $log" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

start() {
  command -v mariadbd >/dev/null || {
    echo "mariadb.sh: mariadbd not found: install the package mariadb-server" >&2
    exit 1
  }
  mkdir -p "$dir"
  if server_pid >/dev/null && [ -s "$urlfile" ]; then
    cat "$urlfile"
    return 0
  fi
  if [ ! -d "$data/mysql" ]; then
    mkdir -p "$data"
    mariadb-install-db --no-defaults --datadir="$data" --user=root \
      --auth-root-authentication-method=socket --skip-test-db >"$dir/install.log" 2>&1 || {
      cat "$dir/install.log" >&2
      echo "mariadb.sh: mariadb-install-db failed" >&2
      exit 1
    }
  fi
  local port started=""
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if launch "$port"; then
      started=yes
      break
    fi
    echo "mariadb.sh: mariadbd did not start on port $port; trying another" >&2
    rm -f "$portfile"
  done
  if [ -z "$started" ]; then
    tail -n 20 "$log" >&2
    echo "mariadb.sh: mariadbd did not start; see $log" >&2
    exit 1
  fi
  echo "$port" >"$portfile"
  local password
  password=$(cat "$passwordfile" 2>/dev/null || true)
  if [ -z "$password" ]; then
    password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077 && echo "$password" >"$passwordfile")
  fi
  # All privileges on this private, throwaway server: the tests create and drop a database
  # per test and read information_schema.innodb_trx (PROCESS) to find a blocked connection.
  root_sql "CREATE DATABASE IF NOT EXISTS $database CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
    CREATE USER IF NOT EXISTS '$user'@'%' IDENTIFIED BY '$password';
    ALTER USER '$user'@'%' IDENTIFIED BY '$password';
    GRANT ALL PRIVILEGES ON *.* TO '$user'@'%';"
  local url="mysql://$user:$password@127.0.0.1:$port/$database"
  (umask 077 && echo "$url" >"$urlfile")
  echo "$url"
}

stop() {
  local pid
  if ! pid=$(server_pid); then
    echo "mariadb.sh: no server running in $dir" >&2
    return 0
  fi
  kill "$pid"
  for _ in $(seq 300); do
    alive "$pid" || {
      rm -f "$urlfile"
      return 0
    }
    sleep 0.1
  done
  echo "mariadb.sh: mariadbd $pid did not stop within 30 s; killing it" >&2
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$urlfile"
}

case $command in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
