#!/bin/sh
# Print the path of a Python >= 3.12: the first of python3, python3.12, python3.13, python3.14 on PATH
# that is one, else the oldest such version pyenv holds. Exit 1 with one line on stderr when there is none.
is_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
for name in python3 python3.12 python3.13 python3.14; do
    path=$(command -v "$name" 2>/dev/null) || continue
    if is_ok "$path"; then echo "$path"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -t. -k1,1n -k2,2n -k3,3n); do
        path="$root/versions/$version/bin/python3"
        if [ -x "$path" ] && is_ok "$path"; then echo "$path"; exit 0; fi
    done
fi
echo "forcedphot needs Python >= 3.12: install one (e.g. 'pyenv install 3.12' or your OS's python3.12 package) or run 'make PYTHON=/path/to/python3.12'" >&2
exit 1
