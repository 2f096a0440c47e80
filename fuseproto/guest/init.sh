#!/bin/sh
# /init of fuseproto's test guest (PID 1, busybox sh). Loads the virtio-fs modules, mounts
# every tag named by fuseproto.tags= on the kernel command line at /mnt/<tag>, runs
# /workload.sh in each mount (from the per-run archive appended to the initrd), reports on
# the serial console between "@@fp" marker lines, unmounts (the daemons see DESTROY) and
# powers the machine off (QEMU exits).
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
echo "@@fp boot $(uname -r)"
for m in $(cat /etc/fuseproto/modules); do
  insmod "/lib/modules/$m.ko" || echo "@@fp error insmod $m"
done
tags=$(sed -n 's/.*fuseproto\.tags=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
for tag in $tags; do
  mkdir -p "/mnt/$tag"
  mount -t virtiofs "$tag" "/mnt/$tag" || echo "@@fp error mount $tag"
done
for tag in $tags; do
  echo "@@fp begin $tag"
  (cd "/mnt/$tag" && sh /workload.sh)
  echo "@@fp end $tag $?"
done
# An unmount that takes 30 s is stuck (it waits for the device: after DESTROY the driver
# waits for every request in flight on every queue): say where, once, then keep waiting.
for tag in $tags; do
  umount "/mnt/$tag" &
  pid=$!
  waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    waited=$((waited + 1))
    if [ "$waited" = 300 ]; then
      echo w > /proc/sysrq-trigger 2>/dev/null
      dmesg 2>/dev/null | grep -A 30 "task:" | sed "s/^/@@fp dmesg /"
      echo "@@fp error umount $tag stuck for 30 s"
      sed "s/^/@@fp stack /" "/proc/$pid/stack" 2>/dev/null
    fi
  done
  wait "$pid" || echo "@@fp error umount $tag"
done
echo "@@fp done"
poweroff -f
