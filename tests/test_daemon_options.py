"""The daemons' option genes (fuseproto.daemons.options): every alternative is accepted by
the real daemon and serves; configs roundtrip, mutate one gene, and refuse bad choices."""

from __future__ import annotations

import errno
import random

import pytest

from fuseproto.client import Client
from fuseproto.daemons.options import (
    DEFAULT,
    GENES,
    DaemonConfig,
    config_from_json,
    mutate_config,
    random_config,
)
from fuseproto.errors import FuseError
from fuseproto.fuzz.seeds import INIT_FLAGS
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire.constants import InitFlags


def _alternatives(kind: str) -> list[DaemonConfig]:
    """The default config and, for every gene, each other alternative alone."""
    out = [DEFAULT[kind]]
    for i, (_, alts) in enumerate(GENES[kind]):
        for j in range(1, len(alts)):
            choice = [0] * len(GENES[kind])
            choice[i] = j
            out.append(DaemonConfig(kind, tuple(choice)))
    return out


def test_config_args_labels_and_json():
    cfg = DaemonConfig("c", (1, 1) + (0,) * (len(GENES["c"]) - 2))
    assert cfg.args == ["-o", "cache=none", "-o", "no_xattr"] and not cfg.xattr
    assert cfg.label == "cache=none,xattr=off"
    assert config_from_json(cfg.to_json()) == cfg
    assert DEFAULT["rust"].args == [] and DEFAULT["rust"].label == "default"
    assert DEFAULT["c"].init_flags == 0 and cfg.init_flags == 0
    acl = DaemonConfig("rust", (0, 2) + (0,) * (len(GENES["rust"]) - 2))
    assert acl.label == "xattr=posix_acl"
    assert acl.init_flags & InitFlags.FUSE_POSIX_ACL and acl.init_flags & InitFlags.FUSE_DONT_MASK
    with pytest.raises(ValueError):
        DaemonConfig("c", (9,) * len(GENES["c"]))
    with pytest.raises(ValueError):
        DaemonConfig("c", (0,))
    with pytest.raises(ValueError):
        DaemonConfig("nfs")
    with pytest.raises(ValueError):
        config_from_json({"kind": "c", "choice": "all"})


def test_mutate_changes_exactly_one_gene_and_random_stays_near_default():
    rng = random.Random(0)
    for kind in GENES:
        cfg = DEFAULT[kind]
        for _ in range(200):
            new = mutate_config(cfg, rng)
            assert sum(a != b for a, b in zip(new.choice, cfg.choice, strict=True)) == 1
            cfg = new
        off = [sum(c != 0 for c in random_config(kind, rng).choice) for _ in range(300)]
        assert 0 < sum(off) / len(off) < len(GENES[kind]) / 2


@pytest.mark.daemon
def test_every_alternative_starts_and_serves(daemon_installations, scratch_dir):
    """Each alternative on its own: the daemon starts, answers the fuzz harness's INIT
    (with the flags the config demands) and a GETATTR of the root, and its xattr answer follows the config (off: ENOTSUP/ENOSYS, on: a list)."""
    import os

    for kind, inst in daemon_installations.items():
        for cfg in _alternatives(kind):
            share = os.path.join(scratch_dir, f"{kind}-{cfg.label}".replace("=", "-"))
            os.makedirs(share)
            t = VhostUserTransport.spawn(inst, share, daemon_args=cfg.args, xattr=cfg.xattr)
            c = Client(t)
            try:
                c.init(flags=INIT_FLAGS | cfg.init_flags)  # as the fuzz harness does
                assert c.getattr(1).attr.ino, (kind, cfg.label)
                try:
                    c.listxattr(1)
                    listed = True
                except FuseError as e:
                    assert e.errno in (errno.ENOTSUP, errno.ENOSYS, errno.EPERM), (kind, cfg.label, e)
                    listed = False
                if not cfg.xattr:
                    assert not listed, (kind, cfg.label)
                if cfg.label == "readonly=ro":  # the option is applied, not only accepted
                    with pytest.raises(FuseError) as ro:
                        c.mkdir(1, "x", 0o755)
                    assert ro.value.errno == errno.EROFS
            finally:
                c.close()
