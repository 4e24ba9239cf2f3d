"""Fixtures of the interoperability suite: a Glance deployment in a temporary directory (its
three configuration files, a catalog made by `glance-manage db sync` on SQLite, PostgreSQL or
MariaDB, a filesystem store and an image cache), Glance's own tools and the real imaged binaries,
all pointed at the same files."""

import datetime
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN_DIR = Path(os.environ.get("IMAGED_BIN_DIR", REPO / "target" / "debug"))
VENV_BIN = Path(sys.executable).parent
ENCRYPTION_KEY = "0123456789abcdef0123456789abcdef"

POSTGRES = os.environ.get("IMAGED_INTEROP_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
MYSQL = os.environ.get("IMAGED_INTEROP_MYSQL", "mysql+pymysql://root@127.0.0.1:3306")


def _unavailable(what, err):
    # In CI a missing server is a broken environment, not a reason to test less.
    msg = f"{what} unreachable: {err}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _server(url):
    """host, port, user of a server URL like postgresql://user@host:port."""
    rest = url.split("://", 1)[1]
    user, hostport = rest.split("@", 1)
    host, port = hostport.split(":")
    return host, int(port), user


def _connect_postgresql(host, port, user):
    import psycopg

    return psycopg.connect(host=host, port=port, user=user, dbname="postgres",
                           connect_timeout=5, autocommit=True)


def _connect_mysql(host, port, user):
    import pymysql

    return pymysql.connect(host=host, port=port, user=user, connect_timeout=5,
                           autocommit=True)


# engine: (server URL, label, connect, CREATE, DROP, Glance's URL for the database)
SERVERS = {
    "postgresql": (POSTGRES, "PostgreSQL", _connect_postgresql, 'CREATE DATABASE "{}"',
                   'DROP DATABASE IF EXISTS "{}" WITH (FORCE)', "{}/{}"),
    "mysql": (MYSQL, "MariaDB", _connect_mysql, "CREATE DATABASE `{}` CHARACTER SET utf8",
              "DROP DATABASE IF EXISTS `{}`", "{}/{}?charset=utf8"),
}


def _create_database(engine):
    """A fresh, empty database; returns (SQLAlchemy URL for Glance, drop callback)."""
    server, label, connect, create, drop_sql, glance_url = SERVERS[engine]
    name = "imaged_interop_" + uuid.uuid4().hex[:12]
    try:
        conn = connect(*_server(server))
    except Exception as e:  # noqa: BLE001  (any driver error means "no server")
        _unavailable(f"{label} at {server}", e)
    conn.cursor().execute(create.format(name))

    def drop():
        conn.cursor().execute(drop_sql.format(name))
        conn.close()

    return glance_url.format(server, name), drop


def run(cmd, *, check=True, timeout=120, env=None):
    """Runs a command (environment `env`, else this process's); with `check`, a non-zero exit
    fails the test with the command's output."""
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


class Glance:
    """One Glance deployment: configuration files, catalog, store and cache directories."""

    def __init__(self, root: Path, connection: str, engine: str, *, encrypted: bool):
        self.root = root
        self.engine = engine
        self._glue = {}
        self.connection = connection
        self.datadir = root / "images"
        self.cache_dir = root / "cache"
        self.datadir.mkdir()
        self.cache_dir.mkdir()
        self.api_conf = root / "glance-api.conf"
        self.scrubber_conf = root / "glance-scrubber.conf"
        self.cache_conf = root / "glance-cache.conf"
        key = f"metadata_encryption_key = {ENCRYPTION_KEY}\n" if encrypted else ""
        # A glance-api.conf as a deployment has it, API-only sections included: imaged must
        # read it unmodified.
        self.api_conf.write_text(
            "[DEFAULT]\n"
            "bind_host = 127.0.0.1\n"
            "bind_port = 9292\n"
            "workers = 2\n"
            "show_image_direct_url = False\n"
            "enabled_import_methods = [glance-direct,web-download]\n"
            "delayed_delete = True\n"
            f"{key}"
            f"image_cache_dir = {self.cache_dir}\n"
            "image_cache_driver = sqlite\n"
            "\n[database]\n"
            f"connection = {connection}\n"
            "\n[glance_store]\n"
            "stores = file\n"
            "default_store = file\n"
            f"filesystem_store_datadir = {self.datadir}\n"
            "\n[oslo_messaging_notifications]\n"
            "driver = noop\n"
            "\n[keystone_authtoken]\n"
            "www_authenticate_uri = http://127.0.0.1:5000\n"
            "auth_url = http://127.0.0.1:5000\n"
            "auth_type = password\n"
            "project_domain_name = Default\n"
            "user_domain_name = Default\n"
            "project_name = service\n"
            "username = glance\n"
            "password = secret\n"
            "\n[paste_deploy]\n"
            "flavor = keystone\n"
        )
        self.scrubber_conf.write_text(
            "[DEFAULT]\nscrub_time = 0\nscrub_pool_size = 1\nwakeup_time = 300\n"
        )
        self.write_cache_conf(max_size=10 * 1024**3, stall_time=86400)

    def write_cache_conf(self, *, max_size, stall_time, cache_dir=None, conf=None,
                         driver="sqlite", node=None):
        node_line = f"worker_self_reference_url = {node}\n" if node else ""
        (conf or self.cache_conf).write_text(
            "[DEFAULT]\n"
            f"image_cache_dir = {cache_dir or self.cache_dir}\n"
            f"image_cache_driver = {driver}\n"
            f"{node_line}"
            f"image_cache_max_size = {max_size}\n"
            f"image_cache_stall_time = {stall_time}\n"
        )

    # -- Glance ---------------------------------------------------------------------------------

    def glance_tool(self, tool, *args, confs=None, check=True):
        files = confs or [self.api_conf]
        cmd = [VENV_BIN / tool] + sum((["--config-file", f] for f in files), []) + list(args)
        return run(cmd, check=check)

    def db_sync(self):
        self.glance_tool("glance-manage", "db", "sync")

    def glue(self, action, request=None, confs=None):
        """Runs one action of glance_glue.py in the Glance process serving these files."""
        return self.glue_many([(action, request, confs)])[0]

    def glue_many(self, calls):
        """Runs (action, request, confs) calls at once, each in the Glance process serving its
        files (different files: concurrently), and returns their results in order."""
        procs = [self._send(*call) for call in calls]
        return [self._receive(proc, call[0]) for proc, call in zip(procs, calls)]

    def _send(self, action, request, confs):
        files = tuple(str(f) for f in (confs or [self.api_conf]))
        proc = self._glue.get(files)
        if proc is None:
            log_path = self.root / f"glance-glue-{len(self._glue)}.log"
            cmd = [sys.executable, str(HERE / "glance_glue.py")]
            cmd += sum((["--config-file", f] for f in files), [])
            with open(log_path, "w") as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log, text=True)
            proc.log_path = log_path
            self._glue[files] = proc
        proc.stdin.write(json.dumps({"action": action, "request": request or {}}) + "\n")
        proc.stdin.flush()
        return proc

    @staticmethod
    def _receive(proc, action):
        line = proc.stdout.readline()
        if not line:
            tail = Path(proc.log_path).read_text()[-6000:]
            raise AssertionError(f"glue process died during {action}\n{tail}")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"glue {action} failed\n{answer['error']}")
        return answer["result"]

    def close(self):
        for proc in self._glue.values():
            proc.stdin.close()
            proc.wait(timeout=30)
        self._glue.clear()

    def glance_scrubber(self):
        return self.glance_tool("glance-scrubber", confs=[self.api_conf, self.scrubber_conf])

    # -- imaged ---------------------------------------------------------------------------------

    def imaged(self, daemon, *args, confs, check=True):
        binary = BIN_DIR / f"imaged-{daemon}"
        if not binary.exists():
            pytest.fail(f"{binary} is missing: build it first (cargo build --workspace)")
        cmd = [binary] + sum((["--config-file", f] for f in confs), []) + list(args)
        # Only the files decide: no stray IMAGED_* overrides from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGED_")}
        return run(cmd, check=check, env=env)

    def imaged_scrubber(self, *args, check=True):
        return self.imaged("scrubber", *args, confs=[self.api_conf, self.scrubber_conf],
                           check=check)

    def imaged_cache(self, *args, confs=None, check=True):
        return self.imaged("cache", *args, confs=confs or [self.api_conf, self.cache_conf],
                           check=check)


ENGINES = ["sqlite", "postgresql", "mysql"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


def make_glance(tmp_path, engine, encrypted, request):
    if engine == "sqlite":
        connection = f"sqlite:///{tmp_path / 'glance.sqlite'}"
    else:
        connection, drop = _create_database(engine)
        request.addfinalizer(drop)
    g = Glance(tmp_path, connection, engine, encrypted=encrypted)
    # Registered after the database's drop, so it runs first: no connection is left open.
    request.addfinalizer(g.close)
    g.db_sync()
    return g


@pytest.fixture
def glance(tmp_path, engine, request):
    """A Glance deployment without location encryption."""
    return make_glance(tmp_path, engine, False, request)


@pytest.fixture
def glance_encrypted(tmp_path, engine, request):
    """A Glance deployment with metadata_encryption_key set."""
    return make_glance(tmp_path, engine, True, request)


def ts(value):
    """A catalog timestamp as Glance's ORM returned it."""
    return None if value is None else datetime.datetime.fromisoformat(value)


def utc_now_floor():
    """Now, naive UTC, floored to the second (MariaDB keeps whole seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
