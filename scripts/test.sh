#!/usr/bin/env bash
# The test command: installs dependencies, builds, runs every test (unit,
# multi-rank at 1-4 ranks, integration) with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "${KSPECDR_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" --timeout 600
