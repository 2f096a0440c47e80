"""Window devices: request semantics (replace, split, refuse), the model device against
the real mmap device, and reads past the host file's end that must not SIGBUS."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from fuseproto.dax.device import HOST_PAGE_SIZE, MmapDevice, ModelDevice, WindowFault
from fuseproto.dax.host import FileStore, HostDirectory
from fuseproto.dax.invariants import TraceRecord, check_trace
from fuseproto.dax.messages import FLAG_READ, FLAG_WRITE, removemapping, setupmapping

P = HOST_PAGE_SIZE
WINDOW = 16 * P


def content(tag: int, n: int) -> bytes:
    return bytes((tag * 29 + i * 3 + (i >> 8)) & 0xFF for i in range(n))


@pytest.fixture
def files():
    return FileStore({1: content(1, 10 * P), 2: content(2, 10 * P + 100)})


def setup(nodeid, foffset, length, moffset, flags=FLAG_READ):
    return setupmapping(nodeid, fh=0, foffset=foffset, length=length, flags=flags, moffset=moffset)


def layout(dev):
    return [(m.moffset, m.length, m.nodeid, m.foffset) for m in dev.mappings()]


def test_exact_cover_replaces(files):
    dev = ModelDevice(WINDOW, files)
    assert dev.submit(setup(1, 0, 2 * P, 2 * P)) == 0
    assert dev.submit(setup(2, 4 * P, 2 * P, 2 * P)) == 0
    assert layout(dev) == [(2 * P, 2 * P, 2, 4 * P)]
    assert dev.read(2 * P, P) == files.data(2)[4 * P : 5 * P]


def test_partial_overlap_splits(files):
    dev = ModelDevice(WINDOW, files)
    dev.submit(setup(1, 0, 6 * P, 0))
    dev.submit(setup(2, 0, 2 * P, 2 * P))
    assert layout(dev) == [(0, 2 * P, 1, 0), (2 * P, 2 * P, 2, 0), (4 * P, 2 * P, 1, 4 * P)]
    dev.submit(removemapping(0, [(P, 2 * P)]))
    assert layout(dev) == [(0, P, 1, 0), (3 * P, P, 2, P), (4 * P, 2 * P, 1, 4 * P)]
    assert dev.read(P, 2 * P) == bytes(2 * P)  # anonymous memory is back


@pytest.mark.parametrize(
    "msg",
    [
        setup(1, 0, P, WINDOW),  # beyond the window
        setup(1, 0, 2 * P, WINDOW - P),  # crosses the end
        setup(1, 100, P, 0),  # foffset misaligned
        setup(1, 0, P, 100),  # moffset misaligned
        setup(1, 0, P + 1, 0),  # len misaligned
        setup(1, 0, 0, 0),  # empty
        removemapping(0, [(0, P), (WINDOW, P)]),  # one bad entry refuses all
        removemapping(0, [(0, P)] * 257),  # above FUSE_REMOVEMAPPING_MAX_ENTRY
        removemapping(0, [(0, P)], count=2),  # count disagrees with entries
    ],
    ids=["beyond", "crosses", "foffset", "moffset", "len", "empty", "entry", "max", "count"],
)
def test_refused_with_einval_and_no_effect(files, msg):
    dev = ModelDevice(WINDOW, files)
    dev.submit(setup(1, 0, 2 * P, 0))
    before = layout(dev)
    assert dev.submit(msg) == errno.EINVAL
    assert layout(dev) == before


def test_removing_unmapped_range_succeeds(files):
    dev = ModelDevice(WINDOW, files)
    assert dev.submit(removemapping(0, [(4 * P, 4 * P)])) == 0


def test_unknown_node_refused(files):
    assert ModelDevice(WINDOW, files).submit(setup(9, 0, P, 0)) == errno.EBADF


def test_read_past_host_eof_faults_instead_of_sigbus(files):
    dev = ModelDevice(WINDOW, files)
    dev.submit(setup(2, 8 * P, 4 * P, 0))  # file 2 ends 100 bytes into its page 10
    assert dev.read(2 * P, 100) == files.data(2)[10 * P :]
    assert dev.read(2 * P + 100, 50) == bytes(50)  # rest of the last page: zeros
    with pytest.raises(WindowFault) as e:
        dev.read(3 * P, 1)
    assert e.value.errno == errno.EFAULT


def test_write_needs_a_writable_mapping(files):
    dev = ModelDevice(WINDOW, files)
    dev.submit(setup(1, 0, P, 0))
    with pytest.raises(WindowFault):
        dev.write(0, b"x")
    dev.submit(setup(1, 0, P, 0, FLAG_READ | FLAG_WRITE))
    dev.write(10, b"xyz")
    assert files.data(1)[10:13] == b"xyz"


# ---- the real mmap window ------------------------------------------------------------------


@pytest.fixture
def hostdir(tmp_path):
    hd = HostDirectory()
    for tag, size in ((1, 10 * P), (2, 10 * P + 100), (3, 3 * P)):
        p = tmp_path / f"f{tag}"
        p.write_bytes(content(tag, size))
        hd.add(p, nodeid=tag)
    return hd


def test_mmap_device_maps_host_files(hostdir):
    with MmapDevice(WINDOW, hostdir.resolve) as dev:
        assert dev.submit(setup(1, 2 * P, 4 * P, 8 * P)) == 0
        assert dev.read(8 * P + 5, 3 * P) == content(1, 10 * P)[2 * P + 5 : 5 * P + 5]
        dev.submit(setup(2, 0, P, 9 * P))  # split
        assert dev.read(9 * P, P) == content(2, P)
        assert dev.read(10 * P, P) == content(1, 10 * P)[4 * P : 5 * P]
        dev.submit(removemapping(0, [(8 * P, 4 * P)]))
        assert dev.read(8 * P, 4 * P) == bytes(4 * P)


def test_mmap_device_writes_through_writable_mapping(hostdir):
    with MmapDevice(WINDOW, hostdir.resolve) as dev:
        dev.submit(setup(3, 0, 3 * P, 0, FLAG_READ | FLAG_WRITE))
        dev.write(P + 1, b"written")
    with open(hostdir.path(3), "rb") as f:
        assert f.read()[P + 1 : P + 8] == b"written"


def test_mmap_device_past_eof_and_truncation_do_not_sigbus(hostdir):
    # In a child process: if the device got this wrong, SIGBUS would kill the runner.
    code = textwrap.dedent(f"""
        import errno, os
        from fuseproto.dax.device import MmapDevice, WindowFault, HOST_PAGE_SIZE as P
        from fuseproto.dax.messages import setupmapping
        paths = {{2: {hostdir.path(2)!r}, 3: {hostdir.path(3)!r}}}
        dev = MmapDevice(16 * P, lambda n, fh: paths[n])
        assert dev.submit(setupmapping(2, fh=0, foffset=8 * P, length=4 * P, flags=2,
                          moffset=0)) == 0
        assert len(dev.read(2 * P, 100)) == 100
        try:
            dev.read(3 * P, 10); raise SystemExit("no fault")
        except WindowFault as e:
            assert e.errno == errno.EFAULT
        # truncate behind the device's back, then copy without the size check
        assert dev.submit(setupmapping(3, fh=0, foffset=0, length=3 * P, flags=2,
                          moffset=4 * P)) == 0
        os.truncate(paths[3], 0)
        try:
            dev.read(4 * P, 10); raise SystemExit("no fault after truncate")
        except WindowFault:
            pass
        try:
            dev.window.read(4 * P, 10)  # the window's own copy, without the size check
            raise SystemExit("copy did not fail")
        except OSError as e:
            assert e.errno == errno.EFAULT, e
            print("EFAULT", e.errno)
    """)
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "EFAULT" in r.stdout


# ---- model vs mmap: one semantics ------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("map"),
            st.sampled_from([1, 2, 3]),
            st.integers(0, 12),
            st.integers(1, 6),
            st.integers(0, 17),
        ),
        st.tuples(st.just("unmap"), st.integers(0, 17), st.integers(0, 6)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_model_and_mmap_devices_agree(ops, tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    hd = HostDirectory()
    store = FileStore()
    for tag, size in ((1, 20 * P), (2, 20 * P + 100), (3, 3 * P)):
        data = content(tag, size)
        (d / str(tag)).write_bytes(data)
        hd.add(d / str(tag), nodeid=tag)
        store.add(tag, data)
    model = ModelDevice(WINDOW, store)
    with MmapDevice(WINDOW, hd.resolve) as real:
        for op in ops:
            if op[0] == "map":
                _, n, fpage, npages, mpage = op
                msg = setup(n, fpage * P, npages * P, mpage * P)
            else:
                _, mpage, npages = op
                msg = removemapping(0, [(mpage * P, npages * P)])
            assert model.submit(msg) == real.submit(msg)
            assert layout(model) == layout(real)
        for page in range(WINDOW // P):
            try:
                want = model.read(page * P, P)
            except WindowFault:
                with pytest.raises(WindowFault):
                    real.read(page * P, P)
                continue
            assert real.read(page * P, P) == want


# ---- captured traces ----------------------------------------------------------------------


def test_check_trace_flags_message_faults_and_two_senders():
    recs = [
        TraceRecord("a", setup(1, 0, 2 * P, 0).raw),
        TraceRecord("b", setup(2, 0, P, P).raw),  # over a's live mapping
        TraceRecord("a", setup(1, 100, P, 0).raw, errno.EINVAL),  # misaligned
        TraceRecord("a", removemapping(0, [(0, P)] * 257).raw),
        TraceRecord("b", None),  # b's session ends
        TraceRecord("c", setup(3, 0, P, 4 * P).raw),
        TraceRecord("c", removemapping(0, [(0, P)], count=2).raw),
    ]
    got = [v.invariant for v in check_trace(recs, WINDOW)]
    assert got == [
        "cross_manager_overlap",
        "alignment",
        "removemapping_count",
        "removemapping_count",
    ]


def test_check_trace_clean_for_one_manager_overwriting_itself():
    recs = [TraceRecord("a", setup(1, 0, 2 * P, 0).raw), TraceRecord("a", setup(2, 0, P, P).raw)]
    assert check_trace(recs, WINDOW) == []
