#!/usr/bin/env bash
# Run the test suite: `bash scripts/test.sh [pytest args]` (after `bash scripts/setup.sh`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/env.sh
source scripts/env.sh

rc=0
# With no paths given pytest runs pytest.ini's testpaths (test/); given paths narrow the run.
python -m pytest -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo '[test] pytest collected no tests: treating that as a failure' >&2
fi
exit "$rc"
