# shellcheck shell=bash
# OpenStack Glance for the interoperability suite (tests/interop): sourced by .ci/run
# (set -euo pipefail in force), or run directly with `bash .ci/setup-interop.sh`.
#
# Installs the pinned Glance release, pytest and the database drivers Glance's SQLAlchemy URLs
# need (psycopg 3 for postgresql://, PyMySQL for mysql+pymysql://) into a venv cached under
# target/ (ignored by git). The venv is reused while its recorded requirement list is exactly
# the one below; any change rebuilds it. Exports IMAGED_INTEROP_PYTHON, the interpreter the
# suite runs with:
#   "$IMAGED_INTEROP_PYTHON" -m pytest tests/interop

IMAGED_GLANCE_VERSION="33.0.0"
_interop_reqs="glance==$IMAGED_GLANCE_VERSION pytest==8.3.4 pytest-xdist==3.8.0 PyMySQL==1.1.1 psycopg[binary]==3.3.9"
_interop_venv="$(pwd)/target/ci-interop/venv-glance-$IMAGED_GLANCE_VERSION"

if [ ! -x "$_interop_venv/bin/python" ] \
  || [ "$(cat "$_interop_venv/.requirements" 2>/dev/null)" != "$_interop_reqs" ]; then
  echo "== setup-interop: installing $_interop_reqs into $_interop_venv"
  _interop_start=$SECONDS
  rm -rf "$_interop_venv"
  mkdir -p "$(dirname "$_interop_venv")"
  python3 -m venv "$_interop_venv"
  # shellcheck disable=SC2086  # the list is split on purpose
  "$_interop_venv/bin/pip" install --quiet --disable-pip-version-check $_interop_reqs
  printf '%s' "$_interop_reqs" >"$_interop_venv/.requirements"
  echo "== setup-interop: installed in $((SECONDS - _interop_start)) s"
fi

export IMAGED_INTEROP_PYTHON="$_interop_venv/bin/python"
echo "== setup-interop: Glance $IMAGED_GLANCE_VERSION at $IMAGED_INTEROP_PYTHON"
unset _interop_reqs _interop_venv _interop_start
