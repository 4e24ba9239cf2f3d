# shellcheck shell=bash
# S3-compatible test server for imaged-store: sourced by .ci/run (set -euo pipefail in force).
#
# Installs moto's standalone server into a venv cached under target/ (ignored by git), starts it
# on a free 127.0.0.1 port in the background and exports IMAGED_TEST_S3_ENDPOINT for the tests.
# The server is bound to loopback only, holds nothing but test buckets, and exits on its own when
# the shell that sourced this file goes away (a watchdog polls the parent pid); its pid is also
# written to target/ci-s3/moto.pid so it can be stopped explicitly:
#   kill "$(cat target/ci-s3/moto.pid)"

IMAGED_MOTO_VERSION="5.2.1"
_s3_root="$(pwd)/target/ci-s3"
_s3_venv="$_s3_root/venv-moto-$IMAGED_MOTO_VERSION"
mkdir -p "$_s3_root"

if [ ! -x "$_s3_venv/bin/moto_server" ]; then
  echo "== setup-s3: installing moto[server]==$IMAGED_MOTO_VERSION into $_s3_venv"
  rm -rf "$_s3_venv"
  python3 -m venv "$_s3_venv"
  "$_s3_venv/bin/pip" install --quiet --disable-pip-version-check \
    "moto[server]==$IMAGED_MOTO_VERSION"
fi

# Stop a server left over from an earlier run of this script.
if [ -s "$_s3_root/moto.pid" ]; then
  kill "$(cat "$_s3_root/moto.pid")" 2>/dev/null || true
  rm -f "$_s3_root/moto.pid"
fi

_s3_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"

# The watchdog subshell ends moto once the sourcing shell (.ci/run) has exited.
_s3_parent=$$
(
  "$_s3_venv/bin/moto_server" -H 127.0.0.1 -p "$_s3_port" >"$_s3_root/moto.log" 2>&1 &
  _moto=$!
  echo "$_moto" >"$_s3_root/moto.pid"
  while kill -0 "$_s3_parent" 2>/dev/null && kill -0 "$_moto" 2>/dev/null; do sleep 2; done
  kill "$_moto" 2>/dev/null || true
) </dev/null >/dev/null 2>&1 &
disown || true

_s3_ok=0
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$_s3_port/', timeout=1)" 2>/dev/null; then
    _s3_ok=1
    break
  fi
  sleep 0.2
done
if [ "$_s3_ok" != 1 ]; then
  echo "== setup-s3: moto_server did not come up; log follows" >&2
  cat "$_s3_root/moto.log" >&2 || true
  false
fi

export IMAGED_TEST_S3_ENDPOINT="http://127.0.0.1:$_s3_port"
echo "== setup-s3: S3 test server at $IMAGED_TEST_S3_ENDPOINT"
unset _s3_root _s3_venv _s3_port _s3_parent _s3_ok
