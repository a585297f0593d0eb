# Shell functions the test-service scripts share (sourced by scripts/mariadb.sh and
# scripts/slurm.sh; not run on its own).

# Whether process $1 still runs. A daemon started by a script is reparented to PID 1 when the
# script exits, and PID 1 may reap it late, so a zombie (state Z) counts as gone (kill -0
# would not).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The state is the field after the parenthesised command name.
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# The pid in pid file $1 when that process is alive.
pid_in() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" && echo "$pid"
}

# Whether nothing listens on 127.0.0.1 port $1.
port_is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
