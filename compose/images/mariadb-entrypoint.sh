#!/bin/sh
# Entrypoint of the locally built reconciler/mariadb image (Debian 12's mariadb-server), modelled on the
# official mariadb image: `mariadbd ...` initialises the data directory on first start (root reached only
# over the unix socket as the OS user root: unix_socket, no password on the network; no test database)
# and runs the server as the mysql user with `--no-defaults` (the image's /etc/mysql never applies: the
# reconciler passes port, bind address, socket and sizes). Anything else is executed as given.
set -eu
case "${1:-}" in
  mariadbd)
    shift
    datadir=/var/lib/mysql
    mkdir -p "$datadir" /run/mysqld
    # A copy made by the host (mode switch, restore) may carry another uid: the server must own its files.
    [ "$(stat -c %U "$datadir")" = mysql ] || chown -R mysql:mysql "$datadir"
    chown mysql:mysql /run/mysqld
    chmod 0700 "$datadir"
    if [ ! -d "$datadir/mysql" ]; then
      mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" \
        --auth-root-authentication-method=socket --skip-test-db >/dev/null
    fi
    exec setpriv --reuid=mysql --regid=mysql --init-groups mariadbd --no-defaults --datadir="$datadir" "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
