#!/bin/sh
# The image's entrypoint (ENTRYPOINT ["/app/docker/entrypoint.sh"], CMD ["serve"]).
#
#   serve [gunicorn options]   the service under gunicorn (the default); a first argument that
#                              starts with "-" means serve with those options too
#   worker | db | quarantine | submit | emulator ...
#                              that `cirelay` command, e.g. `db upgrade` (the Helm hook)
#   anything else              run as given, e.g. `sh`
#
# Every branch ends in exec: the command replaces this shell, so gunicorn (or cirelay) is the
# container's PID 1 and receives `docker stop`'s / the kubelet's SIGTERM itself (gunicorn then
# lets in-flight requests finish: graceful_timeout in app/serving/gunicorn_conf.py).
set -eu

serve() {
    # prometheus_client multiprocess mode: one directory per service instance, emptied at start
    # (files left by a previous run would be summed into /metrics). Emptied rather than removed,
    # so that it may be a mount point (an emptyDir under a read-only root filesystem).
    : "${PROMETHEUS_MULTIPROC_DIR:=/tmp/cirelay-metrics}"
    : "${CIRELAY_BIND:=0.0.0.0:8080}"
    export PROMETHEUS_MULTIPROC_DIR CIRELAY_BIND
    case "$PROMETHEUS_MULTIPROC_DIR" in
        / | /. | //) echo "entrypoint: refusing to empty PROMETHEUS_MULTIPROC_DIR=/" >&2; exit 2 ;;
    esac
    mkdir -p -- "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete

    # The configuration first: every missing or malformed setting listed, exit 2, before
    # gunicorn starts. On SQLite the service owns its database file: bring it to the latest
    # revision (as `cirelay serve` does). On PostgreSQL, `db upgrade` runs once per release (a
    # Helm hook), not in every replica.
    cirelay serve --check >/dev/null
    case "${CIRELAY_DATABASE_URL:-sqlite:}" in
        sqlite*) cirelay db upgrade ;;
    esac

    # the application: the config's wsgi_app (app.asgi on the event-loop worker, the default)
    exec gunicorn --config python:app.serving.gunicorn_conf "$@"
}

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve) shift; serve "$@" ;;
    -*) serve "$@" ;;
    worker | db | quarantine | submit | emulator) exec cirelay "$@" ;;
    *) exec "$@" ;;
esac
