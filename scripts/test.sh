#!/usr/bin/env bash
# Set up everything the test suite needs and run it.
#   - a virtual environment in .venv with infermeter and its test extras;
#   - where apt-get is available and we are root: Debian's chromium (dashboard tests with
#     Playwright) and prometheus (a real server scrapes /metrics). Without them those tests
#     skip with the reason; everything else still runs.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  if [ ${#need[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
      >/tmp/infermeter-apt.log 2>&1 || echo "note: could not install ${need[*]} (see /tmp/infermeter-apt.log); their tests will skip"
  fi
fi
exec .venv/bin/python -m pytest "$@"
