#!/usr/bin/env bash
# Print the path of a Python 3.13 interpreter (chatq needs 3.13; see .python-version).
for candidate in "${CHATQ_PYTHON:-}" "$(pyenv prefix 3.13.0 2>/dev/null)/bin/python3.13" \
                 /root/.pyenv/versions/3.13.0/bin/python3.13 python3.13; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
    echo "$path"; exit 0
  fi
done
echo "chatq needs Python 3.13: install it (pyenv install 3.13.0) or set CHATQ_PYTHON" >&2
exit 1
