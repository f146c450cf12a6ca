#!/usr/bin/env bash
# Run the test suite: `bash scripts/test.sh [pytest args]` (after `bash scripts/setup.sh`).
set -euo pipefail

ROOT="$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"

# Paths given are the caller's (relative to where this is run); without any, pytest runs
# pytest.ini's testpaths (test/), which it reads only from the repository root.
given=0
for arg in "$@"; do
    if [ -e "$arg" ] || [ -e "${arg%%::*}" ]; then given=1; fi
done
[ "$given" = 1 ] || cd "$ROOT"

rc=0
python -m pytest -c "$ROOT/pytest.ini" --rootdir "$ROOT" -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo '[test] pytest collected no tests: treating that as a failure' >&2
fi
exit "$rc"
