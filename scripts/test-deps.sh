#!/usr/bin/env bash
# What `npm test` needs besides npm packages: the stock qemu-pr-helper (Debian package
# qemu-system-common), which test/serve/qemu-compare.test.ts runs case by case beside prmux, and
# python3 >= 3.9 (socket.send_fds) for the independent protocol clients. Installs what is missing
# when it can (root, or sudo without a password); otherwise says what to install.
set -euo pipefail
if ! command -v qemu-pr-helper >/dev/null 2>&1; then
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then as_root=(sudo -n); else
      echo "test-deps: qemu-pr-helper is missing; install Debian's qemu-system-common (the comparison tests will fail without it)" >&2
      exit 0
    fi
  fi
  echo "test-deps: installing qemu-system-common (qemu-pr-helper)" >&2
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends qemu-system-common >/dev/null
fi
python3 -c 'import socket, sys; sys.exit(0 if hasattr(socket, "send_fds") else 1)' || {
  echo "test-deps: python3 >= 3.9 is needed (socket.send_fds)" >&2
  exit 1
}
