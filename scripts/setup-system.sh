#!/usr/bin/env bash
# Installs the Debian packages that GadSynth's tests and tools need, only those that are missing.
set -euo pipefail
# command -> Debian package
declare -A need=(
  [dciodvfy]=dicom3tools
  [storescu]=dcmtk
  [dcm2niix]=dcm2niix
  [Orthanc]=orthanc
  [redis-server]=redis-server
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [buildah]=buildah
  [debootstrap]=debootstrap
  [openssl]=openssl
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
# The DICOMweb plugin has no command of its own.
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
# PostgreSQL's server programs are not on PATH: they live under /usr/lib/postgresql/<version>/bin.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
  missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]} (run as root or install them: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
