"""Pure parts of the local stack's provisioning (no broker started)."""
from pipeline.devtools.stack import new_cluster_id


def test_a_kraft_cluster_id_never_starts_with_a_dash():
    # 0xF8 encodes to '-' as the first URL-safe base64 character: the storage tool took it for an option
    draws = iter([bytes([0xF8]) + bytes(15), bytes(16)])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert all(not new_cluster_id().startswith("-") for _ in range(500))


# -- Debian packages the project installs itself (redis-server, chromium for the console tests) ------

import subprocess  # noqa: E402

import pytest  # noqa: E402

from pipeline.devtools import stack  # noqa: E402


class FakeMachine:
    """PATH and apt-get as a test sees them: installing a package puts its commands on PATH."""

    def __init__(self, monkeypatch, *, root: bool, present=(), provides=None, apt_fails: bool = False):
        self.present = set(present)
        self.provides = provides or {}
        self.ran: list[list[str]] = []
        self.apt_fails = apt_fails
        monkeypatch.setattr(stack.os, "geteuid", lambda: 0 if root else 1000)
        monkeypatch.setattr(stack.shutil, "which",
                            lambda name: f"/usr/bin/{name}" if name in self.present or name == "apt-get" else None)
        monkeypatch.setattr(stack, "_locate", lambda what: (what if what in self.present else None)
                            if what.startswith("/") else stack.shutil.which(what))
        monkeypatch.setattr(stack.subprocess, "run", self.run)

    def run(self, cmd, **kwargs):
        self.ran.append(cmd)
        if self.apt_fails and "install" in cmd:
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package chromium")
        if "install" in cmd:
            for package in cmd[cmd.index("-qq") + 1:]:
                self.present.update(self.provides.get(package, ()))
        return subprocess.CompletedProcess(cmd, 0, "", "")


BROWSER = {"chromium": ["chromium"], "chromium-driver": ["chromedriver"], "fonts-wqy-microhei": [stack.CJK_FONT]}


def test_present_browser_installs_nothing(monkeypatch):
    machine = FakeMachine(monkeypatch, root=True, present={"chromium", "chromedriver", stack.CJK_FONT})
    assert stack.ensure_browser_installed() == {"chromium": "/usr/bin/chromium", "chromedriver": "/usr/bin/chromedriver",
                                                stack.CJK_FONT: stack.CJK_FONT}
    assert machine.ran == []


def test_missing_browser_is_installed_from_debian_as_root(monkeypatch):
    machine = FakeMachine(monkeypatch, root=True, provides=BROWSER)
    paths = stack.ensure_browser_installed()
    assert paths["chromedriver"] == "/usr/bin/chromedriver"
    assert machine.ran == [["apt-get", "update", "-qq"],
                           ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", "fonts-wqy-microhei"]]


def test_missing_browser_without_root_says_what_to_install(monkeypatch):
    machine = FakeMachine(monkeypatch, root=False, present={"chromium"})
    with pytest.raises(stack.StackError, match="chromedriver.*apt-get install chromium chromium-driver"):
        stack.ensure_browser_installed()
    assert machine.ran == []


def test_a_failed_install_or_a_package_without_the_command_is_an_error(monkeypatch):
    FakeMachine(monkeypatch, root=True, apt_fails=True)
    with pytest.raises(stack.StackError, match="Unable to locate package"):
        stack.ensure_browser_installed()
    FakeMachine(monkeypatch, root=True, provides={"chromium": ["chromium"]})
    with pytest.raises(stack.StackError, match="still missing"):
        stack.ensure_browser_installed()


def test_redis_server_is_installed_the_same_way(monkeypatch):
    machine = FakeMachine(monkeypatch, root=True, provides={"redis-server": ["redis-server"]})
    assert stack.ensure_redis_installed() == "/usr/bin/redis-server"
    assert machine.ran[-1] == ["apt-get", "install", "-y", "-qq", "redis-server"]


def test_a_topic_counts_as_visible_only_listed_without_error_and_with_every_leader():
    from types import SimpleNamespace as NS

    from pipeline.kafka_io import unready_topics
    part = lambda leader: NS(leader=leader)  # noqa: E731
    metadata = NS(topics={
        "ready": NS(error=None, partitions={0: part(1), 1: part(1)}),
        "leaderless": NS(error=None, partitions={0: part(1), 1: part(-1)}),
        "erroneous": NS(error="UNKNOWN_TOPIC_OR_PART", partitions={}),
        "empty": NS(error=None, partitions={}),
    })
    assert unready_topics(metadata, ["ready", "leaderless", "erroneous", "empty", "absent"]) == \
        ["leaderless", "erroneous", "empty", "absent"]
    assert unready_topics(metadata, ["ready"]) == []


def test_stack_ports_inside_the_ephemeral_range_are_named(tmp_path, caplog):
    from dataclasses import replace

    from pipeline.config import load_settings
    from pipeline.devtools.stack import ephemeral_ports, warn_if_ephemeral
    proc = tmp_path / "range"
    proc.write_text("32768\t60999\n")
    ports = ephemeral_ports(proc)
    assert ports is not None and 32768 in ports and 60999 in ports and 61000 not in ports
    assert ephemeral_ports(tmp_path / "absent") is None
    s = load_settings()
    assert warn_if_ephemeral(replace(s, kafka_port=19092, redis_port=16379), ports) == []
    with caplog.at_level("WARNING"):
        assert warn_if_ephemeral(replace(s, kafka_port=49092, redis_port=46379), ports) == [49092, 49093, 46379]
    assert "49092 is inside the ephemeral port range 32768-60999" in caplog.text
