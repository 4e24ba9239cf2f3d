"""Scenario 6: the configuration files Glance's own tools run with are fed to imaged
unmodified (every other scenario runs imaged on them too); here each daemon validates them and
reports their values as Glance reads them."""

import pytest

from conftest import ENCRYPTION_KEY, Glance


@pytest.mark.parametrize("daemon,second", [
    ("scrubber", "scrubber_conf"),
    ("cache", "cache_conf"),
    ("tasks", None),
])
def test_glance_files_are_valid_imaged_configuration(tmp_path, daemon, second):
    g = Glance(tmp_path, f"sqlite:///{tmp_path / 'glance.sqlite'}", "sqlite", encrypted=True)
    confs = [g.api_conf] + ([getattr(g, second)] if second else [])
    proc = g.imaged(daemon, "config", "check", confs=confs)
    assert proc.returncode == 0
    shown = g.imaged(daemon, "config", "show", confs=confs).stdout
    assert str(g.datadir) in shown
    assert g.connection in shown
    # Secrets from Glance's file are read but never printed.
    assert ENCRYPTION_KEY not in shown
