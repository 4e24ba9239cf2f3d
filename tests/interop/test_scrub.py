"""imaged-scrubber on a catalog Glance made and filled: the rows it leaves are the rows Glance's
own scrubber leaves, Glance reads them back, and glance-scrubber finds nothing left to do.

Scenarios 1 (scrub of Glance-deleted images), 2 (half scrubbed by glance-scrubber, half by
imaged-scrubber) and 3 (imaged-scrubber restore read back by Glance).
"""

import datetime
import os

from conftest import ts, utc_now_floor

SLACK = datetime.timedelta(seconds=1)

# Several locations, properties, tags and members, every visibility. Image 0 stays active: the
# scrubber must not touch it.
IMAGES = [
    {"visibility": "public", "extra_locations": 2, "properties": {"os_distro": "debian"},
     "tags": ["keep"], "delete": False},
    {"visibility": "public", "extra_locations": 2,
     "properties": {"os_distro": "ubuntu", "hw_disk_bus": "virtio"}, "tags": ["a", "b"],
     "delete": True},
    {"visibility": "private", "extra_locations": 0, "properties": {"p": "1"}, "tags": ["t"],
     "delete": True},
    {"visibility": "shared", "extra_locations": 1, "properties": {"p": "2"}, "tags": ["s"],
     "members": ["22222222222222222222222222222222", "33333333333333333333333333333333"],
     "delete": True},
    {"visibility": "community", "extra_locations": 1, "properties": {"p": "3"},
     "tags": ["c1", "c2"], "delete": True},
]


def _children(rows, image_id):
    return {
        kind: sorted((r for r in rows[kind] if r["image_id"] == image_id), key=lambda r: r["id"])
        for kind in ("properties", "tags", "members")
    }


def _locations(rows, image_id):
    return {k: v for k, v in rows["locations"].items() if v["image_id"] == image_id}


def assert_glance_delete_state(before, image_id):
    """What glance-api's DELETE with delayed_delete leaves: the scrubber's input."""
    img = before["images"][image_id]
    assert (img["status"], img["deleted"]) == ("pending_delete", True)
    assert img["deleted_at"] is not None
    for loc in _locations(before, image_id).values():
        assert (loc["status"], loc["deleted"]) == ("pending_delete", True)


def assert_scrubbed_like_glance(before, after, image_id, paths, started):
    """The row states glance-scrubber writes after a successful scrub (catalog-schema §5):
    locations status 'deleted', deleted, deleted_at = updated_at = scrub time; the image
    status 'deleted', updated_at = scrub time, deleted and deleted_at unchanged; properties,
    tags and members untouched; the data gone."""
    b, a = before["images"][image_id], after["images"][image_id]
    assert a["status"] == "deleted", image_id
    assert a["deleted"] is True
    assert a["deleted_at"] == b["deleted_at"], "deleted_at must be left unchanged"
    assert ts(a["updated_at"]) >= started - SLACK
    for key in set(a) - {"status", "updated_at"}:
        assert a[key] == b[key], key
    locs_b, locs_a = _locations(before, image_id), _locations(after, image_id)
    assert locs_a.keys() == locs_b.keys() and locs_a
    for loc_id, la in locs_a.items():
        lb = locs_b[loc_id]
        assert (la["status"], la["deleted"]) == ("deleted", True), (image_id, loc_id)
        assert la["deleted_at"] is not None and la["deleted_at"] == la["updated_at"]
        assert ts(la["deleted_at"]) >= started - SLACK, "deleted_at is the scrub time"
        assert (la["url"], la["encrypted"], la["meta_data"]) == (
            lb["url"], lb["encrypted"], lb["meta_data"])
    assert _children(after, image_id) == _children(before, image_id)
    for p in paths:
        assert not os.path.exists(p), p


def assert_untouched(before, after, image_id, paths):
    assert after["images"][image_id] == before["images"][image_id]
    assert _locations(after, image_id) == _locations(before, image_id)
    assert _children(after, image_id) == _children(before, image_id)
    for p in paths:
        assert os.path.exists(p), p


def test_scrub_of_glance_deleted_images(glance_encrypted):
    """Scenario 1. The catalog holds encrypted location URLs and one image from before the
    key was set (plaintext URLs), as after an upgrade."""
    g = glance_encrypted
    specs = IMAGES + [{"visibility": "private", "extra_locations": 1, "properties": {"old": "y"},
                       "tags": ["legacy"], "delete": True, "legacy_plaintext": True}]
    made = g.glue("make_images", {"images": specs})["images"]
    before = g.glue("dump")
    deleted = [i for i, m in made.items() if m["spec"]["delete"]]
    kept = [i for i, m in made.items() if not m["spec"]["delete"]]
    for image_id in deleted:
        assert_glance_delete_state(before, image_id)
    encrypted = {loc["encrypted"] for loc in before["locations"].values()}
    assert encrypted == {True, False}, "the catalog mixes encrypted and plaintext URLs"
    # Glance's own scrubber cannot even list this queue (its defect D6); imaged must scrub it.
    assert before["glance_scrub_queue"].startswith("listing failed")
    for image_id, m in made.items():
        for p in m["paths"]:
            assert os.path.exists(p)

    started = utc_now_floor()
    proc = g.imaged_scrubber("once")
    assert "scrub pass:" in proc.stderr + proc.stdout

    after = g.glue("dump")
    for image_id in deleted:
        assert_scrubbed_like_glance(before, after, image_id, made[image_id]["paths"], started)
    for image_id in kept:
        assert_untouched(before, after, image_id, made[image_id]["paths"])
    assert after["glance_scrub_queue"] == []

    # Glance's own scrubber, run afterwards on the same files, has nothing to do and changes
    # nothing.
    proc = g.glance_scrubber()
    assert "Scrubbing image" not in proc.stderr
    assert "Unable to scrub" not in proc.stderr
    final = g.glue("dump")
    assert {k: v for k, v in final.items() if k != "now"} == {
        k: v for k, v in after.items() if k != "now"}

    # Glance still serves the live image whole.
    read = g.glue("read_images", {"ids": kept})["images"]
    for image_id in kept:
        assert read[image_id]["status"] == "active"
        assert read[image_id]["sha256"] == made[image_id]["sha256"]
        assert len(read[image_id]["locations"]) == 3


def test_half_scrubbed_by_glance_half_by_imaged(glance):
    """Scenario 2. Glance deletes and scrubs one half; then deletes the other half, which
    imaged-scrubber scrubs. Both halves end in the same row states; community images, which
    glance-scrubber never lists, are finished by imaged; a second pass of either scrubber
    changes nothing."""
    g = glance
    specs = [dict(s, delete=False) for s in IMAGES[1:]] * 2
    made = g.glue("make_images", {"images": specs})["images"]
    ids = sorted(made, key=lambda i: made[i]["n"])
    first, second = ids[: len(IMAGES) - 1], ids[len(IMAGES) - 1:]

    g.glue("delete_images", {"ids": first})
    before_glance = g.glue("dump")
    started_glance = utc_now_floor()
    g.glance_scrubber()
    after_glance = g.glue("dump")
    community = [i for i in first if made[i]["spec"]["visibility"] == "community"]
    for image_id in first:
        if image_id in community:
            # Glance's scrubber never lists community images (its known defect D1).
            assert_glance_delete_state(after_glance, image_id)
        else:
            assert_scrubbed_like_glance(before_glance, after_glance, image_id,
                                        made[image_id]["paths"], started_glance)

    g.glue("delete_images", {"ids": second})
    before_imaged = g.glue("dump")
    started_imaged = utc_now_floor()
    g.imaged_scrubber("once")
    after_imaged = g.glue("dump")
    for image_id in second + community:
        assert_scrubbed_like_glance(before_imaged, after_imaged, image_id,
                                    made[image_id]["paths"], started_imaged)
    # What glance-scrubber finished stays exactly as glance-scrubber left it: nothing is
    # scrubbed twice.
    for image_id in set(first) - set(community):
        assert after_imaged["images"][image_id] == after_glance["images"][image_id]
        assert _locations(after_imaged, image_id) == _locations(after_glance, image_id)

    # Same shapes on both sides: per column, the halves agree.
    def shape(rows, image_id):
        img = rows["images"][image_id]
        locs = sorted((v["status"], v["deleted"], v["deleted_at"] == v["updated_at"],
                       v["meta_data"]) for v in _locations(rows, image_id).values())
        # Not compared with the image's deleted_at: glance-api's delete stamps properties a
        # moment before the image (its purge in image_update precedes image_destroy), so on
        # MariaDB's whole seconds the two may or may not fall in the same second.
        kids = {k: [(r["deleted"], r["deleted_at"] is not None) for r in v]
                for k, v in _children(rows, image_id).items()}
        return img["status"], img["deleted"], img["visibility"], locs, kids

    for a, b in zip(first, second):
        if a not in community:
            assert shape(after_imaged, a) == shape(after_imaged, b)

    assert after_imaged["glance_scrub_queue"] == []
    g.glance_scrubber()
    g.imaged_scrubber("once")
    final = g.glue("dump")
    assert final["images"] == after_imaged["images"]
    assert final["locations"] == after_imaged["locations"]


def test_restore_is_read_back_by_glance_as_a_whole_image(glance_encrypted):
    """Scenario 3. glance-api deletes an image with delayed_delete; imaged-scrubber restore
    brings it back; Glance's domain layer reads an active image with its locations,
    properties, tags and members, and serves its data. Deleting it again through Glance and
    scrubbing with imaged removes the data."""
    g = glance_encrypted
    specs = [dict(IMAGES[3], delete=False), dict(IMAGES[1], delete=False)]
    made = g.glue("make_images", {"images": specs})["images"]
    ids = sorted(made, key=lambda i: made[i]["n"])
    original = g.glue("read_images", {"ids": ids})["images"]
    rows_before = g.glue("dump")
    g.glue("delete_images", {"ids": ids})

    for image_id in ids:
        g.imaged_scrubber("restore", image_id)

    restored = g.glue("read_images", {"ids": ids})["images"]
    assert restored == original
    for image_id in ids:
        assert restored[image_id]["status"] == "active"
        assert len(restored[image_id]["locations"]) == 1 + made[image_id]["spec"][
            "extra_locations"]
    rows = g.glue("dump")

    def but_updated_at(row):
        return {k: v for k, v in row.items() if k != "updated_at"}

    for image_id in ids:
        # Every column as before the delete (status active, deleted 0, deleted_at NULL).
        img = rows["images"][image_id]
        assert (img["status"], img["deleted"], img["deleted_at"]) == ("active", False, None)
        assert but_updated_at(img) == but_updated_at(rows_before["images"][image_id])
        assert _locations(rows, image_id).keys() == _locations(rows_before, image_id).keys()
        for loc_id, loc in _locations(rows, image_id).items():
            assert (loc["status"], loc["deleted"], loc["deleted_at"]) == ("active", False, None)
            assert but_updated_at(loc) == but_updated_at(rows_before["locations"][loc_id])
            assert loc["encrypted"] is True
        for kind, kids in _children(rows, image_id).items():
            assert [(r["id"], r["deleted"], r["deleted_at"]) for r in kids] == [
                (r["id"], False, None) for r in _children(rows_before, image_id)[kind]], kind
    assert rows["glance_scrub_queue"] == []

    # The restored image goes through Glance's delete and imaged's scrub like any other.
    g.glue("delete_images", {"ids": ids})
    before = g.glue("dump")
    started = utc_now_floor()
    g.imaged_scrubber("once")
    after = g.glue("dump")
    for image_id in ids:
        assert_scrubbed_like_glance(before, after, image_id, made[image_id]["paths"], started)
