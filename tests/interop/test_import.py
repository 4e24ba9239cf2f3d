"""Scenario 5: a legacy `import` task created through Glance's task repository is run by
imaged-tasks; Glance reads an active image with the checksum, os_hash_value, size, location and
properties Glance's own taskflow executor writes when it imports the same bytes."""

import hashlib
import http.server
import os
import threading

import pytest

from conftest import ENGINES, make_glance

PROPERTIES = {
    "name": "imported",
    "disk_format": "raw",
    "container_format": "bare",
    "visibility": "private",
    "os_distro": "debian",
    "hw_disk_bus": "scsi",
}


def _serve(root):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module", params=ENGINES)
def imported(request, tmp_path_factory):
    """The same raw file, served over loopback HTTP, imported once by imaged-tasks and once by
    Glance's own taskflow executor, both from tasks Glance's task repository created, on one
    catalog and store. Returns both tasks as Glance reads them."""
    root = tmp_path_factory.mktemp("import")
    g = make_glance(root, request.param, False, request)
    served = root / "served"
    served.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (served / "disk.raw").write_bytes(data)
    server = _serve(served)
    request.addfinalizer(server.shutdown)
    port = server.server_address[1]
    work = root / "work"
    work.mkdir()
    # Both executors read the same filter and work options from glance-api.conf.
    with open(g.api_conf, "a") as f:
        f.write(
            "\n[import_filtering_opts]\n"
            "allowed_hosts = [127.0.0.1]\n"
            f"allowed_ports = [{port}]\n"
            f"\n[task]\nwork_dir = {work}\n"
        )
    req = {"uri": f"http://127.0.0.1:{port}/disk.raw", "format": "raw",
           "properties": PROPERTIES}
    ours = g.glue("create_import_task", req)["task_id"]
    proc = g.imaged("tasks", "once", confs=[g.api_conf])
    assert "succeeded=1" in proc.stdout + proc.stderr, proc.stderr
    theirs = g.glue("create_import_task", dict(req, run=True))["task_id"]
    return {
        "glance": g,
        "data": data,
        "imaged": g.glue("read_task", {"task_id": ours}),
        "reference": g.glue("read_task", {"task_id": theirs}),
    }


def test_import_matches_glance_own_import(imported):
    a, b, data = imported["imaged"], imported["reference"], imported["data"]
    g = imported["glance"]
    assert b["status"] == "success", b["message"]
    assert a["status"] == "success", a["message"]
    assert a["expires_at"] is not None and b["expires_at"] is not None
    assert (a["message"], sorted(a["result"])) == (b["message"], sorted(b["result"]))
    assert a["owner"] == b["owner"]
    ia, ib = a["image"], b["image"]
    assert ia["row"]["checksum"] == hashlib.md5(data).hexdigest()
    assert (ia["row"]["os_hash_algo"], ia["row"]["os_hash_value"]) == (
        "sha512", hashlib.sha512(data).hexdigest())
    assert ia["row"]["size"] == len(data)
    assert ia["sha256"] == hashlib.sha256(data).hexdigest()
    for key in ("status", "size", "checksum", "properties", "tags", "sha256", "visibility"):
        assert ia[key] == ib[key], key
    # Every column but the ids and timestamps, owner (NULL from both) and virtual_size
    # (the data size from both) included.
    differ = {"created_at", "updated_at", "deleted_at"}
    assert {k: v for k, v in ia["row"].items() if k not in differ} == {
        k: v for k, v in ib["row"].items() if k not in differ}
    assert ia["location_rows"] == ib["location_rows"]
    assert len(ia["locations"]) == len(ib["locations"]) == 1
    # Both store the data in the file store under the image id.
    image_ids = (a["result"]["image_id"], b["result"]["image_id"])
    for image, image_id in zip((ia, ib), image_ids):
        assert image["locations"][0]["url"] == f"file://{g.datadir}/{image_id}"
        assert image["locations"][0]["metadata"] == {}
        assert os.path.getsize(g.datadir / image_id) == len(data)


def test_import_owner_matches_glance(imported):
    # Glance 33's legacy flow creates the image through the image factory without an owner
    # (the API context is the task owner's, but nothing passes it on): images.owner is NULL.
    a, b = imported["imaged"], imported["reference"]
    assert a["owner"] == b["owner"] and a["owner"]
    assert a["image"]["row"]["owner"] is None
    assert b["image"]["row"]["owner"] is None


def test_import_virtual_size_matches_glance(imported):
    # Raw data: Glance records the data size as the virtual size.
    a, b = imported["imaged"]["image"], imported["reference"]["image"]
    assert b["row"]["virtual_size"] == len(imported["data"])
    assert a["row"]["virtual_size"] == b["row"]["virtual_size"]


def test_import_leaves_no_lock_row_like_glance(imported):
    # Glance's legacy import never writes os_glance_import_task; imaged drops its lock row
    # outright (no soft-deleted row), so every property row, deleted or not, is the same.
    a, b = imported["imaged"]["image"], imported["reference"]["image"]
    assert not [p for p in a["property_rows"] if p[0] == "os_glance_import_task"]
    assert a["property_rows"] == b["property_rows"]
