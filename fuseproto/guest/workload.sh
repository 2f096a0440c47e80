# fuseproto's guest workload (busybox sh), run by /init in the root of one virtio-fs mount
# that fuseproto.guest.workload.prepare_share() filled on the host. Each result is one
# line "@@r KEY VALUE..."; fuseproto.guest.workload.check() compares them, and the share
# afterwards, with what the host expects.
r() { echo "@@r $*"; }
sha() { sha256sum | cut -d' ' -f1; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Reading what the host put there (LOOKUP, READDIR(PLUS), GETATTR, OPEN, READ, READLINK).
r ls $(ls)
r ls_sub $(ls sub)
r cat "$(cat hello.txt)"
r stat $(stat -c '%s %F %a' hello.txt) $(stat -c '%F' sub)
r host_link $(readlink host-link) "$(cat host-link)"
r getxattr_host $(fpguest getxattr xattr.txt user.host)

# Changing it (CREATE, WRITE, MKDIR, UNLINK, RMDIR, RENAME, SYMLINK, SETATTR).
echo "written by the guest" > guest.txt; r write $?
r cat_guest "$(cat guest.txt)"
echo "appended" >> guest.txt; r append $?
mkdir guest-dir && echo inside > guest-dir/inner.txt; r mkdir $?
mkdir doomed-dir && rmdir doomed-dir; r rmdir $?
rm remove-me.txt; r rm $?
r gone $(ls remove-me.txt doomed-dir 2>/dev/null | wc -l)
mv rename-me.txt renamed.txt; r rename $? "$(cat renamed.txt)"
ln -s hello.txt guest-link; r symlink $? $(readlink guest-link) "$(cat guest-link)"
truncate -s 1000 shrink.txt; r truncate_down $? $(stat -c %s shrink.txt)
truncate -s 3000000 grow.txt; r truncate_up $? $(stat -c %s grow.txt)
chmod 600 guest.txt; r chmod $? $(stat -c %a guest.txt)

# Extended attributes (SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR).
r setxattr $(fpguest setxattr guest.txt user.guest from-the-guest)
r setxattr_doomed $(fpguest setxattr guest.txt user.doomed x)
r removexattr $(fpguest removexattr guest.txt user.doomed)
r getxattr $(fpguest getxattr guest.txt user.guest)
r listxattr $(fpguest listxattr guest.txt)

# 8 MiB through dd, read cold then written back (READ, WRITE, FSYNC, FLUSH, RELEASE).
drop_caches
r read_big $(dd if=big.bin bs=1M 2>/dev/null | sha)
dd if=big.bin of=guest-big.bin bs=1M conv=fsync 2>/dev/null; r write_big $?
drop_caches
r reread_big $(stat -c %s guest-big.bin) $(dd if=guest-big.bin bs=1M 2>/dev/null | sha)

# fsync/fdatasync and flock on the share.
r fsync $(fpguest fsync guest.txt)
sync guest.txt; r sync_file $?
r flock $(fpguest flock guest.txt)
r end
