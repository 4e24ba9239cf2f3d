"""Calls OpenStack Glance's own code for the interoperability suite.

Run with the interpreter of the Glance venv:

    python glance_glue.py --config-file glance-api.conf [--config-file ...]

It reads requests as JSON lines on stdin ({"action": ..., "request": {...}}) and answers each
with one JSON line on stdout; Glance's logging goes to stderr. One process serves one set of
configuration files, because oslo.config and Glance's database engine are process-wide
singletons; like a glance-api worker, it stays up while the imaged binaries run.

Everything here goes through Glance's domain layer, its DB API (glance.db.sqlalchemy.api), its
ImageCache or its task executor exactly as glance-api does; nothing writes rows by hand, so the
rows are Glance's own.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import traceback
import warnings

# The suite judges imaged against Glance, not Glance's warnings.
warnings.simplefilter("ignore")

from oslo_config import cfg  # noqa: E402

CONF = cfg.CONF
OWNER = "11111111111111111111111111111111"


def _iso(v):
    return None if v is None else v.isoformat(sep=" ")


def _boot(config_files):
    # Every module that registers options is imported before the command line is parsed, as
    # Glance's own entry points do.
    import glance.common.config  # noqa: F401  (metadata_encryption_key & co.)
    import glance.image_cache  # noqa: F401  (image_cache_*)
    import glance.scrubber  # noqa: F401  (scrub_time & co.)
    import glance.gateway  # noqa: F401

    CONF(sum((["--config-file", f] for f in config_files), []), project="glance")


def _stores():
    import glance_store

    glance_store.register_opts(CONF)
    glance_store.create_stores(CONF)
    glance_store.verify_default_store()


def _ctx(project=OWNER):
    import glance.context

    return glance.context.RequestContext(
        is_admin=True, project_id=project, user_id="u-" + project[:8], roles=["admin"]
    )


def _db():
    from glance.db.sqlalchemy import api

    return api


def _encrypt(url):
    from glance.common import crypt

    key = CONF.metadata_encryption_key
    return crypt.urlsafe_encrypt(key, url) if key else url


def _decrypt(value):
    """The plaintext URL and whether the row held it encrypted."""
    from glance.common import crypt

    key = CONF.metadata_encryption_key
    if key and not value.startswith("file://"):
        return crypt.urlsafe_decrypt(key, value), True
    return value, False


# --- catalog ---------------------------------------------------------------------------------


def make_images(req):
    """Creates images as glance-api does (domain layer, data upload through the file store),
    adds extra locations, members, tags and properties, and deletes the ones asked for through
    the domain layer, which is glance-api's DELETE path with delayed_delete on."""
    import glance.gateway

    _stores()
    gw = glance.gateway.Gateway()
    ctx = _ctx()
    db = _db()
    datadir = CONF.glance_store.filesystem_store_datadir
    out = {}
    key = CONF.metadata_encryption_key
    for n, spec in enumerate(req["images"]):
        # A "legacy" image predates the encryption key: its rows hold plaintext URLs.
        if spec.get("legacy_plaintext"):
            CONF.set_override("metadata_encryption_key", None)
        try:
            factory = gw.get_image_factory(ctx)
            repo = gw.get_repo(ctx)
            # glance-api's images create sets the owner to the caller's project.
            image = factory.new_image(
                owner=ctx.owner,
                name=spec.get("name", "img-%d" % n),
                visibility=spec.get("visibility", "private"),
                disk_format="raw",
                container_format="bare",
                extra_properties=dict(spec.get("properties", {})),
                tags=set(spec.get("tags", [])),
            )
            repo.add(image)
            data = ("image %d " % n).encode() * (64 + 32 * n)
            image.set_data(io.BytesIO(data), len(data))
            repo.save(image)
            image_id = image.image_id
            paths = [os.path.join(datadir, image_id)]
            for extra in range(spec.get("extra_locations", 0)):
                path = os.path.join(datadir, "%s-extra%d" % (image_id, extra))
                with open(path, "wb") as f:
                    f.write(data)
                db.image_location_add(
                    ctx,
                    image_id,
                    {"url": _encrypt("file://" + path), "metadata": {}, "status": "active"},
                )
                paths.append(path)
            if spec.get("members"):
                image = repo.get(image_id)
                member_factory = gw.get_image_member_factory(ctx)
                member_repo = gw.get_member_repo(image, ctx)
                for member in spec["members"]:
                    member_repo.add(member_factory.new_image_member(image, member))
            if spec.get("delete"):
                image = repo.get(image_id)
                image.delete()
                repo.remove(image)
            out[image_id] = {
                "n": n,
                "paths": paths,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "spec": spec,
            }
        finally:
            CONF.set_override("metadata_encryption_key", key)
    return {"images": out}


def delete_images(req):
    """Deletes images through the domain layer, as glance-api's DELETE does."""
    import glance.gateway

    _stores()
    gw = glance.gateway.Gateway()
    repo = gw.get_repo(_ctx())
    for image_id in req["ids"]:
        image = repo.get(image_id)
        image.delete()
        repo.remove(image)
    return {"deleted": req["ids"]}


def dump(req):
    """Every row of the image tables, read through Glance's ORM models, plus what Glance's own
    scrubber queue would list right now."""
    from glance.db.sqlalchemy import models
    from glance import scrubber

    db = _db()
    rows = {"images": {}, "locations": {}, "properties": [], "tags": [], "members": []}
    with db.session_for_read() as s:
        for r in s.query(models.Image).all():
            rows["images"][r.id] = {
                "status": r.status,
                "deleted": bool(r.deleted),
                "deleted_at": _iso(r.deleted_at),
                "updated_at": _iso(r.updated_at),
                "created_at": _iso(r.created_at),
                "visibility": r.visibility,
                "size": r.size,
                "checksum": r.checksum,
                "os_hash_algo": r.os_hash_algo,
                "os_hash_value": r.os_hash_value,
                "owner": r.owner,
                "name": r.name,
                "disk_format": r.disk_format,
                "container_format": r.container_format,
                "min_disk": r.min_disk,
                "min_ram": r.min_ram,
                "protected": bool(r.protected),
                "os_hidden": bool(r.os_hidden),
                "virtual_size": r.virtual_size,
            }
        for r in s.query(models.ImageLocation).all():
            url, encrypted = _decrypt(r.value)
            rows["locations"][str(r.id)] = {
                "image_id": r.image_id,
                "url": url,
                "encrypted": encrypted,
                "status": r.status,
                "deleted": bool(r.deleted),
                "deleted_at": _iso(r.deleted_at),
                "updated_at": _iso(r.updated_at),
                "meta_data": r.meta_data,
            }
        for model, key, fields in (
            (models.ImageProperty, "properties", ("name", "value")),
            (models.ImageTag, "tags", ("value",)),
            (models.ImageMember, "members", ("member", "status", "can_share")),
        ):
            for r in s.query(model).all():
                row = {f: getattr(r, f) for f in fields}
                row.update(
                    id=r.id,
                    image_id=r.image_id,
                    deleted=bool(r.deleted),
                    deleted_at=_iso(r.deleted_at),
                    updated_at=_iso(r.updated_at),
                )
                rows[key].append(row)
    # The listing glance-scrubber starts from. It raises on rows it cannot read, so a listing
    # that comes back also proves Glance can parse every pending row.
    # A row it cannot decrypt stops the whole listing (Glance's defect D6): reported as such.
    try:
        records = scrubber.get_scrub_queue().get_all_locations()
        rows["glance_scrub_queue"] = [
            [image_id, [[loc[0], loc[1]] for loc in locs]] for image_id, locs in _group(records)
        ]
    except Exception as e:  # noqa: BLE001
        rows["glance_scrub_queue"] = "listing failed: %s: %s" % (type(e).__name__, e)
    rows["now"] = _iso(_utcnow())
    return rows


def _group(records):
    by_image = {}
    for rec in records:
        by_image.setdefault(rec[0], []).append((rec[1], rec[2]))
    return sorted(by_image.items())


def _utcnow():
    from oslo_utils import timeutils

    return timeutils.utcnow()


def read_images(req):
    """Reads images the way glance-api serves them: domain image, active locations, properties,
    tags, members, and the data itself through the location-aware store proxy."""
    import glance.gateway

    _stores()
    gw = glance.gateway.Gateway()
    ctx = _ctx()
    repo = gw.get_repo(ctx)
    out = {}
    for image_id in req["ids"]:
        image = repo.get(image_id)
        members = []
        if image.visibility == "shared":
            members = sorted(m.member_id for m in gw.get_member_repo(image, ctx).list())
        data = b"".join(image.get_data()) if image.locations else b""
        out[image_id] = {
            "status": image.status,
            "visibility": image.visibility,
            "locations": [
                {"url": loc["url"], "status": loc.get("status"), "metadata": loc["metadata"]}
                for loc in image.locations
            ],
            "properties": dict(image.extra_properties),
            "tags": sorted(image.tags),
            "members": members,
            "size": image.size,
            "checksum": image.checksum,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return {"images": out}


def create_import_task(req):
    """Creates a legacy `import` task as glance-api's POST /v2/tasks does (URI validation,
    task factory, task repository). With `run`, also runs it on Glance's own taskflow executor
    to the end, as the API's task thread does."""
    import glance.async_
    import glance.gateway
    from glance.common.scripts import utils as script_utils

    _stores()
    glance.async_.set_threadpool_model("native")
    gw = glance.gateway.Gateway()
    # The request context glance-api builds for the task owner's project; the executor gets the
    # same one (tasks.py: get_task_executor_factory(req.context)). The legacy flow's image
    # factory call still passes no owner, so Glance writes images.owner = NULL.
    ctx = _ctx()
    task_input = {
        "import_from": req["uri"],
        "import_from_format": req["format"],
        "image_properties": req["properties"],
    }
    script_utils.validate_legacy_import_from_uri(task_input["import_from"])
    task = gw.get_task_factory(ctx).new_task(
        task_type="import", owner=ctx.owner, task_input=task_input, image_id=None,
        user_id=ctx.user_id, request_id=ctx.request_id)
    gw.get_task_repo(ctx).add(task)
    if req.get("run"):
        task.run(gw.get_task_executor_factory(ctx).new_task_executor(ctx))
    return {"task_id": task.task_id}


def read_task(req):
    """A task and the image it made, as Glance's repositories return them."""
    import glance.gateway

    _stores()
    gw = glance.gateway.Gateway()
    ctx = _ctx()
    task = gw.get_task_repo(ctx).get(req["task_id"])
    out = {"status": task.status, "result": task.result, "message": task.message,
           "expires_at": _iso(task.expires_at), "owner": task.owner, "image": None}
    if task.result and task.result.get("image_id"):
        image_id = task.result["image_id"]
        out["image"] = read_images({"ids": [image_id]})["images"][image_id]
        rows = dump({})
        out["image"]["row"] = rows["images"][image_id]
        out["image"]["location_rows"] = [
            {k: v for k, v in loc.items() if k in ("status", "deleted", "meta_data", "encrypted")}
            for loc in rows["locations"].values() if loc["image_id"] == image_id]
        out["image"]["property_rows"] = sorted(
            (p["name"], p["value"], p["deleted"])
            for p in rows["properties"] if p["image_id"] == image_id)
    return out


# --- image cache ------------------------------------------------------------------------------


def _cache():
    from glance import image_cache

    return image_cache.ImageCache()


def cache_fill(req):
    """Caches images, records hits, and leaves an invalid file (an aborted write) through
    Glance's ImageCache exactly as glance-api's cache middleware does."""
    import time

    cache = _cache()
    out = {}
    for item in req["images"]:
        data = item["byte"].encode() * item["size"]
        assert cache.cache_image_iter(item["id"], iter([data]))
        out[item["id"]] = hashlib.sha256(data).hexdigest()
        # last_accessed has one-second resolution in Glance's comparisons; keep the LRU order
        # unambiguous.
        time.sleep(item.get("pause", 0))
    for image_id in req.get("reads", []):
        with cache.open_for_read(image_id) as f:
            f.read()
        time.sleep(req.get("read_pause", 0))
    for image_id in req.get("aborted", []):
        # A download whose source fails part-way: Glance moves the partial file to invalid/.
        def broken():
            yield b"partial data"
            raise IOError("source went away")

        try:
            for _ in cache.cache_tee_iter(image_id, broken(), None):
                pass
        except IOError:
            pass
    for image_id in req.get("queue", []):
        assert cache.queue_image(image_id)
    return {"sha256": out}


def cache_state(req):
    """What Glance's ImageCache sees, and whether it can still read and write the cache."""
    cache = _cache()
    listed = cache.get_cached_images()
    out = {
        "cached": sorted(i["image_id"] for i in listed),
        "hits": {i["image_id"]: i["hits"] for i in listed},
        "size": cache.get_cache_size(),
        "queued": sorted(cache.get_queued_images()),
        "reads": {},
    }
    for image_id in out["cached"] if req.get("read", True) else []:
        assert cache.is_cached(image_id)
        with cache.open_for_read(image_id) as f:
            out["reads"][image_id] = hashlib.sha256(f.read()).hexdigest()
    for item in req.get("write", []):
        data = item["byte"].encode() * item["size"]
        assert cache.cache_image_iter(item["id"], iter([data]))
        with cache.open_for_read(item["id"]) as f:
            assert f.read() == data
    out["size_after_write"] = cache.get_cache_size()
    out["cached_after_write"] = sorted(i["image_id"] for i in cache.get_cached_images())
    return out


ACTIONS = {
    f.__name__: f
    for f in (make_images, delete_images, dump, read_images, create_import_task, read_task,
              cache_fill, cache_state)
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config-file", action="append", default=[])
    args = p.parse_args()
    _boot(args.config_file)
    # One request per line on stdin, one answer per line on stdout, until stdin closes.
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = {"result": ACTIONS[req["action"]](req.get("request") or {})}
        except Exception:  # noqa: BLE001  (the failure goes back to the test that asked)
            answer = {"error": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
