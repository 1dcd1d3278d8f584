# Sourced by the scripts: create a virtual environment and install stockade
# into it (editable, with the test extras), once, and again when the build
# changes (the compiled receiver is built at install).
ensure_venv() {
    local dir=$1 py=${2:-python3}
    if [ ! -x "$dir/bin/stockade" ] || [ pyproject.toml -nt "$dir/.installed" ] \
        || [ setup.py -nt "$dir/.installed" ] \
        || [ src/stockade/supervisor/_fastpath.c -nt "$dir/.installed" ]; then
        "$py" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
        touch "$dir/.installed"
    fi
}
