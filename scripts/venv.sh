# Sourced by demo.sh and test.sh: use the active virtual environment, or create and
# activate the project's own (.venv, git-ignored), so nothing is installed into the
# system or pyenv interpreter.
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "creating the project virtual environment .venv" >&2
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
echo "using $(python -c 'import sys; print(sys.prefix)')" >&2
