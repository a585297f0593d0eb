#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine: installs the system packages the
# tests need, checks formatting, lints, the no-async-runtime rule, then runs the whole test
# suite (unit tests, the real binary's integration tests).
#   usage: scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests (and the load harness) use. apt-get runs only when one is missing.
# mariadb-server: the db tests run each body on SQLite and on a real MariaDB.
# slurm-wlm slurm-wlm-torque munge: the slurm and pbs grid plugins are tested against a real
# single-node Slurm (scripts/slurm.sh) and Slurm's torque wrappers (qsub/qstat/qdel); munge is
# Slurm's usual auth daemon (the test Slurm runs with auth/none, the package keeps slurm-wlm's
# dependencies complete on a fresh machine).
# chromium chromium-driver: the browser tests (tests/browser.rs) drive a real headless Chromium.
packages=(wrk pkg-config libssl-dev mariadb-server mariadb-client slurm-wlm slurm-wlm-torque munge
  chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The install starts nothing and enables nothing at boot: the tests run private instances
# (scripts/mariadb.sh, scripts/slurm.sh), and mariadb, munge and slurm must not be left
# running or enabled on a developer's machine. A policy-rc.d answering 101 ("action not
# allowed") keeps the packages' scripts from starting their services; it is ours only while
# apt-get runs, and only if there was none. On a machine running systemd the units of every
# package the install added (dependencies too) are then disabled, since Debian's scripts
# enable units whatever policy-rc.d says.
policy_rc=/usr/sbin/policy-rc.d
remove_policy_rc() {
  if [ -n "${made_policy_rc:-}" ]; then $sudo_cmd rm -f "$policy_rc"; made_policy_rc=""; fi
}
installed_packages() {
  dpkg-query -W -f='${db:Status-Status} ${Package}\n' | awk '$1 == "installed" {print $2}' | sort
}
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  before=$(installed_packages)
  made_policy_rc=""
  if [ ! -e "$policy_rc" ]; then
    trap remove_policy_rc EXIT
    printf '#!/bin/sh\n# scripts/test-all.sh of iceprod: start no service during its apt-get install.\nexit 101\n' \
      | $sudo_cmd tee "$policy_rc" >/dev/null
    $sudo_cmd chmod 755 "$policy_rc"
    made_policy_rc=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  remove_policy_rc
  trap - EXIT
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    added=$(comm -13 <(echo "$before") <(installed_packages))
    units=()
    for p in $added; do
      while read -r f; do
        # Aliases (symlinks such as mysql.service) go with their unit; templates (x@.service)
        # are enabled only per instance.
        [ -f "$f" ] && [ ! -L "$f" ] || continue
        case "$f" in
          */systemd/system/*@.*) ;;
          */lib/systemd/system/*.service | */lib/systemd/system/*.socket | \
            */lib/systemd/system/*.timer | */lib/systemd/system/*.path)
            units+=("$(basename "$f")") ;;
        esac
      done < <(dpkg-query -L "$p" 2>/dev/null)
    done
    if [ ${#units[@]} -gt 0 ]; then
      echo "== not enabled at boot: ${units[*]}"
      $sudo_cmd systemctl disable --quiet "${units[@]}" ||
        echo "warning: systemctl disable failed; check: systemctl is-enabled ${units[*]}" >&2
    fi
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== no async runtime in the server's dependency tree"
if cargo tree --workspace -e normal -i tokio >/dev/null 2>&1; then
  echo "tokio is in the dependency tree:"; cargo tree --workspace -e normal -i tokio | head
  exit 1
fi

echo "== a private MariaDB for the db tests"
scratch=$(mktemp -d)
trap 'scripts/mariadb.sh stop "$scratch/mariadb" >/dev/null 2>&1 || true
  scripts/slurm.sh stop "$scratch/slurm" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
ICEPROD_TEST_MYSQL_URL=$(scripts/mariadb.sh start "$scratch/mariadb")
export ICEPROD_TEST_MYSQL_URL

echo "== a private single-node Slurm for the slurm and pbs plugin tests"
ICEPROD_TEST_SLURM_CONF=$(scripts/slurm.sh start "$scratch/slurm")
export ICEPROD_TEST_SLURM_CONF
# The real-Slurm tests fail instead of skipping when the Slurm above is missing.
export ICEPROD_REQUIRE_SLURM=1
# Likewise the browser tests fail instead of skipping when chromium is missing.
export ICEPROD_REQUIRE_CHROMIUM=1
# And the systemd unit test (it adds a system user and runs the server as it) fails instead of
# skipping when the tests do not run as root.
export ICEPROD_REQUIRE_ROOT=1

echo "== cargo test"
cargo test --workspace --all-targets
