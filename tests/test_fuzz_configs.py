"""The live loops' daemon configurations (fuseproto.fuzz.configs): the chooser starts from
the default, explores near it, and breeds from configs that paid off."""

from __future__ import annotations

import errno
import threading

import pytest

from fuseproto.daemons.options import DEFAULT, GENES, DaemonConfig
from fuseproto.fuzz.configs import ConfigChooser


def _distance(a: DaemonConfig, b: DaemonConfig) -> int:
    return sum(x != y for x, y in zip(a.choice, b.choice, strict=True))


def test_first_is_default_then_explores():
    ch = ConfigChooser("c", seed=1)
    assert ch.next() == DEFAULT["c"]
    seen = {ch.next() for _ in range(300)}
    assert DEFAULT["c"] in seen and len(seen) > 20
    assert sum(ch.used.values()) == 301


def test_a_config_that_gains_becomes_a_parent_and_is_bred_from():
    """Credit one config far from the default: its mutants (one gene away from it, so
    at least its distance - 1 from the default) come up far more often than chance."""
    far = DaemonConfig("rust", tuple(len(alts) - 1 for _, alts in GENES["rust"]))
    plain = ConfigChooser("rust", seed=3)
    bred = ConfigChooser("rust", seed=3)
    bred.credit(far, 50)
    bred.credit(None, 10)  # nothing to credit: ignored
    bred.credit(DEFAULT["rust"], 0)  # no gain: not a parent
    assert set(bred.gain) == {DEFAULT["rust"], far}
    near = len(GENES["rust"]) - 1

    def close_to_far(ch: ConfigChooser) -> int:
        return sum(_distance(ch.next(), far) <= 1 for _ in range(400))

    assert close_to_far(bred) > 100 and close_to_far(plain) == 0, near
    s = bred.summary()
    assert s["gains"] == {far.label: 50.0} and sum(s["daemons"].values()) == 400


def test_threads_share_one_chooser():
    ch = ConfigChooser("c", seed=0)
    out: list[DaemonConfig] = []

    def worker() -> None:
        for _ in range(200):
            out.append(ch.next())
            ch.credit(out[-1], 1)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(out) == 800 and sum(ch.used.values()) == 800
    assert sum(ch.gain.values()) == 800


# -- with the real daemons ----------------------------------------------------------------------

@pytest.mark.daemon
def test_replay_starts_the_daemon_with_the_reproducers_config(daemon_installations):
    """A reproducer's ``daemon_config`` is how its daemon is started again: a MKDIR on a
    share the config makes read-only is EROFS; without the config it is made."""
    from construct import Container

    from fuseproto.fuzz.replay import replay_daemon
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode

    rust = daemon_installations["rust"]
    ro = DaemonConfig("rust", tuple(1 if name == "readonly" else 0
                                    for name, _ in GENES["rust"]))
    req = codec.encode_request(fuse_opcode.FUSE_MKDIR,
                               Container(mode=0o755, umask=0, name=b"newdir"),
                               unique=1 << 41, nodeid=1)
    doc = {"target": "virtiofsd", "daemon": "rust", "requests": [{"hex": req.hex()}]}
    (plain,) = replay_daemon(doc, rust)
    (refused,) = replay_daemon(dict(doc, daemon_config=ro.to_json()), rust)
    assert plain.cls.startswith("FUSE_MKDIR:0:"), plain.cls
    assert refused.cls == f"FUSE_MKDIR:-{errno.EROFS}", refused.cls


@pytest.mark.daemon
def test_the_live_loop_varies_its_daemons_configs(daemon_installations, tmp_path):
    """With ``configs=True`` the daemons the loop starts (the C daemon dies often) get
    several configs; a finding on a non-default one names it in its reproducer."""
    import json
    from pathlib import Path

    from fuseproto.fuzz.findings import FindingStore
    from fuseproto.fuzz.virtiofsd import fuzz_daemon

    st = fuzz_daemon(daemon_installations["c"], seconds=60, store=FindingStore(tmp_path),
                     seed=0, max_requests=400, configs=True)
    assert st.error is None and st.starts >= 3, (st.error, st.starts)
    assert len(st.configs["daemons"]) >= 2, st.configs
    assert sum(st.configs["daemons"].values()) >= st.starts
    for f in st.findings:
        doc = json.loads(Path(f.reproducer).read_text())
        if "daemon_config" in doc:
            cfg = doc["daemon_config"]
            assert cfg["kind"] == "c" and cfg["label"] != "default" and cfg["args"]


@pytest.mark.daemon
def test_a_config_whose_daemon_fails_is_refused_and_the_default_serves(
        daemon_installations, monkeypatch):
    """A config the daemon rejects (here a cache mode it does not know, planted in the
    gene table) costs one failed start: the harness starts the default instead and the
    chooser never picks that config again."""
    from fuseproto.daemons import options
    from fuseproto.daemons.options import Alt
    from fuseproto.fuzz.harness import DaemonHarness

    genes = list(options.GENES["c"])
    name, alts = genes[0]
    genes[0] = (name, (*alts, Alt("bogus", ("-o", "cache=bogus"))))
    monkeypatch.setitem(options.GENES, "c", tuple(genes))
    bad = DaemonConfig("c", (len(alts),) + (0,) * (len(genes) - 1))

    class Once(ConfigChooser):
        def next(self) -> DaemonConfig:
            return bad if not self.refused else super().next()

    ch = Once("c", seed=0)
    with DaemonHarness(daemon_installations["c"], config=ch) as h:
        assert h.config is None and h.healthy()  # the default options serve
        assert list(ch.refused) == [bad] and "bogus" in bad.label
        h.start()
        assert h.config is not None and h.config != bad
    assert ch.summary()["refused"] == {bad.label: ch.refused[bad]}


def test_a_config_saved_before_genes_were_appended_reads_back_with_them_at_default():
    from fuseproto.daemons.options import config_from_json

    old = config_from_json({"kind": "c", "choice": [1, 0, 0]})  # three genes then
    assert len(old.choice) == len(GENES["c"]) and old.label == "cache=none"
    with pytest.raises(ValueError):
        config_from_json({"kind": "c", "choice": [0] * (len(GENES["c"]) + 1)})


def test_reply_invisible_genes_of_the_c_daemon():
    """debug, caps, fds and client_init change no reply by themselves: their alternatives
    add daemon options or INIT flags only (the edge-steered ConfigChooser tells them apart)."""
    from fuseproto.wire.constants import InitFlags

    names = [g for g, _ in GENES["c"]]
    for gene, arg in (("debug", "debug"), ("caps", "modcaps="), ("fds", "--rlimit-nofile=")):
        choice = [0] * len(names)
        choice[names.index(gene)] = 1
        cfg = DaemonConfig("c", tuple(choice))
        assert any(arg in a for a in cfg.args) and cfg.init_flags == 0, gene
    choice = [0] * len(names)
    choice[names.index("client_init")] = 1
    wide = DaemonConfig("c", tuple(choice))
    assert wide.args == [] and InitFlags(wide.init_flags) & InitFlags.FUSE_WRITEBACK_CACHE
