#!/bin/sh
# The images' entrypoint. Prefect's Kubernetes and Docker workers start a flow run by giving the
# container the job's command (`prefect flow-run execute`) as its arguments; Prefect's own images
# `exec "$@"`, and so does this one when the first argument is a program the image has. Anything else
# is a w2s subcommand, so `docker run w2s-gpu run --config configs/tldr_llama3b.yaml` still works.
#   w2s-entrypoint prefect flow-run execute    -> prefect flow-run execute
#   w2s-entrypoint run --config tiny           -> w2s run --config tiny
set -e
if [ "$#" -gt 0 ] && command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec w2s "$@"
