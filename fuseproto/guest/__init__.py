"""A real Linux guest for the tests: QEMU boots Debian's kernel with a busybox initramfs,
mounts virtio-fs shares served by real virtiofsd daemons and runs a scripted workload.

* :mod:`~fuseproto.guest.assets`: the kernel, its modules and the initramfs, fetched from
  Debian's archive by package name and cached (:func:`prepare`);
* :mod:`~fuseproto.guest.initramfs`: cpio "newc" archives written directly;
* :mod:`~fuseproto.guest.vm`: one QEMU run (:class:`Guest`), started and stopped by PID;
* :mod:`~fuseproto.guest.workload`: the workload, the share it runs on and the checks of
  its results on the host and in the guest.
"""

from .assets import MODULES, GuestAssets, cached, find_qemu, guest_dir, prepare

__all__ = ["MODULES", "GuestAssets", "cached", "find_qemu", "guest_dir", "prepare"]
