#!/usr/bin/env bash
# Install everything kairos-py needs on a fresh Debian 12 machine. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-yaml
  qemu-system-x86 qemu-utils ovmf
  mmdebstrap squashfs-tools xorriso mtools dosfstools e2fsprogs fdisk gdisk zstd cpio rsync
  grub-efi-amd64-bin grub-pc-bin dracut-core
  openssh-client
  sshpass
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv is tied to the absolute path it was made at: rebuild it if it came from elsewhere.
if [ -d .venv ] && ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.prefix == "'"$PWD"'/.venv" else 1)' 2>/dev/null; then
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> python venv"
  /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.kairos-setup-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "==> pip install -e .[test]"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.kairos-setup-*
  touch "$stamp"
fi
echo "setup done"
