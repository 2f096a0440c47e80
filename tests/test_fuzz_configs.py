"""The live loops' daemon configurations (fuseproto.fuzz.configs): the chooser starts from
the default, explores near it, and breeds from configs that paid off."""

from __future__ import annotations

import threading

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
