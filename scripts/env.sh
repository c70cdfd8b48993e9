# Source this file: it creates .venv (if missing) and installs PyTorch and the requirements into it.
#   source scripts/env.sh
# TORCH_SPEC overrides the PyTorch requirement (default torch==2.13.0, a CPU build on the CI machines;
# on a GPU machine with a CUDA build of torch already in the venv, set TORCH_SPEC="torch").
_bdk_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_bdk_venv="${BDK_VENV:-$_bdk_root/.venv}"
if [ ! -x "$_bdk_venv/bin/python" ]; then
    echo "[env] creating $_bdk_venv"
    python3 -m venv "$_bdk_venv"
fi
# shellcheck disable=SC1091
source "$_bdk_venv/bin/activate"
_bdk_stamp="$_bdk_venv/.bdk-requirements.sha256"
_bdk_want="$(cat "$_bdk_root/requirements.txt" "$_bdk_root/pyproject.toml" | sha256sum | cut -d' ' -f1) ${TORCH_SPEC:-torch==2.13.0}"
if [ ! -f "$_bdk_stamp" ] || [ "$(cat "$_bdk_stamp")" != "$_bdk_want" ]; then
    echo "[env] installing ${TORCH_SPEC:-torch==2.13.0} and requirements.txt"
    python -m pip install -q --upgrade pip
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
    (cd "$_bdk_root" && python -m pip install -q -r requirements.txt)
    echo "$_bdk_want" > "$_bdk_stamp"
fi
python -c "import torch, bdk; print(f'[env] python {__import__(\"sys\").version.split()[0]}, torch {torch.__version__}, bdk {bdk.__version__}')"
unset _bdk_root _bdk_venv _bdk_stamp _bdk_want
