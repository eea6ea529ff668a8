#!/bin/sh
# PowerMTA's accounting pipe: loads settings, sends logs somewhere readable, and
# becomes `pmta-pipe ingest`.
#
# Installed as /usr/local/bin/pmta-pipe-wrapper (root:root, 0755) and named in
# PowerMTA's config:   <acct-file |/usr/local/bin/pmta-pipe-wrapper>
# Arguments on that line are passed on to `pmta-pipe ingest` (e.g. --source mta1);
# never put a password there: PowerMTA's command lines are visible in `ps`.
#
# Settings: /etc/pmta-pipe/env (see deploy/systemd/pmta-pipe.env.example). Only
# lines NAME=value whose NAME starts with PMTA_PIPE_ or PG are taken; the file is
# read as data, never run as shell code.
#
# Logs: where PowerMTA sends its pipe program's stderr is not documented, so this
# wrapper chooses: the systemd journal (journalctl -t pmta-pipe) when systemd-cat
# and a journal are there, else the file in PMTA_PIPE_WRAPPER_LOG_FILE (default
# /var/log/pmta-pipe/ingest.log, which must be writable by pmta).
# PMTA_PIPE_WRAPPER_LOG_TO=journal|file|stderr in the env file forces one.
# PMTA_PIPE_PROGRAM names the program (default /usr/local/bin/pmta-pipe).
#
# By hand, with the same settings: a first argument naming another command runs
# that command instead, its output on the terminal:
#     sudo -u pmta pmta-pipe-wrapper import /var/log/pmta/acct-*.csv
#     sudo -u pmta pmta-pipe-wrapper status
set -eu

ENV_FILE=${PMTA_PIPE_ENV_FILE:-/etc/pmta-pipe/env}
if [ -r "$ENV_FILE" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
            PMTA_PIPE_*=* | PG*=*)
                name=${line%%=*}
                case $name in
                    *[!A-Za-z0-9_]*) continue ;;   # not a variable name: skip
                esac
                export "$line"
                ;;
        esac
    done < "$ENV_FILE"
elif [ -e "$ENV_FILE" ]; then
    echo "pmta-pipe-wrapper: cannot read $ENV_FILE (run as $(id -un))" >&2
fi

PROGRAM=${PMTA_PIPE_PROGRAM:-/usr/local/bin/pmta-pipe}

case ${1:-} in
    import | replay | status | report | prune | migrate)
        exec "$PROGRAM" "$@"
        ;;
    ingest)
        shift
        ;;
esac

LOG_FILE=${PMTA_PIPE_WRAPPER_LOG_FILE:-/var/log/pmta-pipe/ingest.log}
LOG_TO=${PMTA_PIPE_WRAPPER_LOG_TO:-auto}   # auto, journal, file or stderr

if [ "$LOG_TO" = auto ]; then
    if command -v systemd-cat >/dev/null 2>&1 && [ -S /run/systemd/journal/stdout ]; then
        LOG_TO=journal
    else
        LOG_TO=file
    fi
fi

case $LOG_TO in
    journal)
        # systemd-cat connects stdout and stderr to the journal and execs the program:
        # same process, stdin (PowerMTA's pipe) untouched
        exec systemd-cat --identifier=pmta-pipe "$PROGRAM" ingest "$@"
        ;;
    file)
        exec >>"$LOG_FILE" 2>&1
        exec "$PROGRAM" ingest "$@"
        ;;
    *)
        exec "$PROGRAM" ingest "$@"
        ;;
esac
