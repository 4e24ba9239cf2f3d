"""Scenario 4: imaged-cache prune and clean on a cache Glance's ImageCache wrote; Glance then
lists, reads and writes the cache without error and the size limit holds. The result is
compared file for file and row for row with what glance-cache-pruner and
glance-cache-cleaner do to a second cache filled the same way. Both drivers: sqlite (cache.db)
and centralized_db (the catalog's cached_images and node_reference tables)."""

import os
import time
import uuid

import pytest

SIZE = 4096
# Four cached images of SIZE bytes; a limit of two and a half images leaves two.
MAX_SIZE = 2 * SIZE + SIZE // 2
STALL_TIME = 3600


def _tree(root):
    """Every file under the cache directory, by part, except Glance's lock files and cache.db
    (the cache.db content is compared through Glance's ImageCache)."""
    out = {}
    for part in ("", "incomplete", "invalid", "queue"):
        d = os.path.join(root, part)
        out[part or "cached"] = sorted(
            f for f in os.listdir(d)
            if os.path.isfile(os.path.join(d, f)) and (part or _is_image(f))
        )
    return out


def _is_image(name):
    try:
        uuid.UUID(name)
        return True
    except ValueError:
        return False


def _fill_request(cached, queued, pause):
    """Glance's ImageCache writes four catalog images, reads the first again (it becomes the
    most recently used), aborts one download (left in invalid/) and queues an active catalog
    image."""
    return {
        "images": [{"id": i, "byte": "abcd"[n], "size": SIZE, "pause": pause}
                   for n, i in enumerate(cached)],
        "reads": cached[:1],
        "read_pause": pause,
        "aborted": [str(uuid.uuid4())],
        "queue": [queued],
    }


def _crashed_downloads(cache_dir):
    """A download a crashed process left in incomplete/ long ago, and a live one."""
    stalled, live = str(uuid.uuid4()), str(uuid.uuid4())
    for name, age in ((stalled, 2 * STALL_TIME), (live, 0)):
        path = cache_dir / "incomplete" / name
        path.write_bytes(b"x" * 100)
        t = time.time() - age
        os.utime(path, (t, t))
    return live


@pytest.mark.parametrize("driver", ["sqlite", "centralized_db"])
def test_prune_and_clean_on_glance_cache(glance, driver):
    """Two cache nodes filled the same way through Glance's ImageCache: glance-cache-pruner and
    glance-cache-cleaner run on one (the reference), imaged-cache prune and clean on the other.
    With centralized_db both nodes share the catalog's cache tables, so imaged must also leave
    the other node's rows alone."""
    g = glance
    # Cached and queued images are active catalog images, as glance-api only caches those.
    made = g.glue("make_images", {"images": [{"visibility": "public"}] * 5})["images"]
    *cached, queued = sorted(made, key=lambda i: made[i]["n"])

    ref_dir = g.root / "cache-glance"
    ref_dir.mkdir()
    ref_conf = g.root / "glance-cache-reference.conf"
    g.write_cache_conf(max_size=MAX_SIZE, stall_time=STALL_TIME, driver=driver,
                       node="http://node-imaged:9292")
    g.write_cache_conf(max_size=MAX_SIZE, stall_time=STALL_TIME, driver=driver,
                       node="http://node-glance:9292", cache_dir=ref_dir, conf=ref_conf)
    confs, ref_confs = [g.api_conf, g.cache_conf], [g.api_conf, ref_conf]
    # MariaDB keeps whole seconds in the catalog's last_accessed: without a pause the LRU order
    # would be a tie that Glance itself breaks arbitrarily.
    pause = 1.05 if (driver, g.engine) == ("centralized_db", "mysql") else 0
    fill = _fill_request(cached, queued, pause)
    sha, _ = g.glue_many([("cache_fill", fill, confs), ("cache_fill", fill, ref_confs)])
    live, ref_live = _crashed_downloads(g.cache_dir), _crashed_downloads(ref_dir)

    # Looking must not count as using: no reads here, or the LRU order would change.
    before = g.glue("cache_state", {"read": False}, confs=confs)
    assert before["cached"] == sorted(cached)
    assert before["size"] > MAX_SIZE

    g.glance_tool("glance-cache-pruner", confs=ref_confs)
    g.glance_tool("glance-cache-cleaner", confs=ref_confs)
    reference = _tree(ref_dir)
    reference_state = g.glue("cache_state", {"read": False}, confs=ref_confs)

    g.imaged_cache("prune")
    g.imaged_cache("clean")
    result = _tree(g.cache_dir)

    # Least recently used first: the images written after the first one (which was read
    # again) go, oldest first, until the cache fits.
    expected_cached = sorted([cached[0], cached[3]])
    assert result == {
        "cached": expected_cached,
        "incomplete": [live],
        "invalid": [],
        "queue": [queued],
    }
    assert reference == dict(result, incomplete=[ref_live])

    after = g.glue("cache_state", {"write": [{"id": str(uuid.uuid4()), "byte": "z",
                                              "size": 10}]}, confs=confs)
    assert after["cached"] == expected_cached == reference_state["cached"]
    assert after["hits"] == reference_state["hits"]
    assert after["queued"] == [queued]
    assert after["size"] <= MAX_SIZE
    assert after["reads"] == {i: sha["sha256"][i] for i in expected_cached}
    assert len(after["cached_after_write"]) == len(expected_cached) + 1
    # The other node's cache is as Glance's tools left it.
    assert g.glue("cache_state", {"read": False}, confs=ref_confs)["cached"] == expected_cached

    # A second pass has nothing to do.
    assert g.imaged_cache("prune").returncode == 0
    assert _tree(g.cache_dir)["cached"] == after["cached_after_write"]
