#!/bin/sh
# Python 3.11 with venv on the image's base: Debian 12 has it; Ubuntu (the NVIDIA CUDA images) gets it from the
# deadsnakes PPA. Leaves no package lists behind.
set -eu
export DEBIAN_FRONTEND=noninteractive
if command -v python3.11 >/dev/null 2>&1 && python3.11 -c "import venv, ensurepip" 2>/dev/null; then
    exit 0
fi
apt-get update -qq
if grep -qi '^ID=ubuntu' /etc/os-release; then
    apt-get install -y -qq --no-install-recommends software-properties-common gpg-agent
    add-apt-repository -y ppa:deadsnakes/ppa
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv libgomp1 ca-certificates
    apt-get purge -y -qq --auto-remove software-properties-common gpg-agent
else
    apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv libgomp1 ca-certificates
fi
rm -rf /var/lib/apt/lists/*
