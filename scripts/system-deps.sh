#!/usr/bin/env bash
# The Debian packages a target needs, by group (default: test):
#   test  `make test`: dicom3tools (dciodvfy, the DICOM validator) and Debian's Chromium +
#         ChromeDriver for the browser test (no browser download)
#   team  `make team-up`: the PostgreSQL and Redis servers of the team deployment
#
# Installs the missing ones when it can (root, or passwordless sudo, with apt-get); otherwise
# stops with one message naming the packages and the command to install them. Idempotent:
# with everything present it does nothing and touches no package list.
set -euo pipefail

group=${1:-test}
declare -A tool_of=(
  [dicom3tools]=dciodvfy
  [chromium]=/usr/bin/chromium
  [chromium-driver]=/usr/bin/chromedriver
  [postgresql]=pg_ctlcluster
  [redis-server]=redis-server
)
case $group in
  test) packages=(dicom3tools chromium chromium-driver) ;;
  team) packages=(postgresql redis-server) ;;
  *) echo "system-deps.sh: unknown group '$group' (test or team)" >&2; exit 2 ;;
esac
need=()
for package in "${packages[@]}"; do
  tool=${tool_of[$package]}
  if [[ $tool == /* ]]; then [[ -x $tool ]] || need+=("$package")
  else command -v "$tool" >/dev/null 2>&1 || need+=("$package"); fi
done
[[ ${#need[@]} -eq 0 ]] && exit 0

command_line="apt-get update && apt-get install -y ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make needs these Debian packages (or their tools on PATH): ${need[*]}" >&2
  echo "This machine has no apt-get: install their equivalents yourself." >&2
  exit 1
fi
if [[ $(id -u) -eq 0 ]]; then sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n)
else
  echo "make needs these Debian packages, missing here: ${need[*]}" >&2
  echo "Install them once, then rerun make:  sudo sh -c '$command_line'" >&2
  exit 1
fi
echo "installing Debian packages ($group): ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
