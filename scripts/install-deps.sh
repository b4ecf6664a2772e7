#!/usr/bin/env bash
# Installs every Debian package that the build, tests, demo, benchmarks and
# plotting scripts need. Idempotent: packages already present are skipped.
# slurm-wlm and munge: the single-node SLURM of scripts/local-slurm.sh and the
# slurm_archive test (their daemons are not started by the packages in a
# container without systemd; local-slurm.sh starts its own).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  libcfitsio-dev
  zlib1g-dev
  libeigen3-dev
  libboost-program-options-dev
  liberfa-dev iraf-noao
  libspdlog-dev libfmt-dev
  libgtest-dev googletest libbenchmark-dev
  python3-numpy python3-scipy python3-matplotlib python3-h5py python3-astropy python3-specreduce
  slurm-wlm munge
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
