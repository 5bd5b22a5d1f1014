#!/bin/bash
# immucore: the Kairos initramfs step, run by the image's own python3 (kairos.immucore).
# The kairos Python package itself is not installed here: the builder appends it to the
# initrd as a separate cpio archive, so code changes never require running dracut again.

check() {
    require_binaries python3 || return 1
    # Only when asked for (--add immucore or add_dracutmodules), never by hostonly guessing.
    return 255
}

depends() {
    echo "rootfs-block dm fs-lib dmsquash-live"
    return 0
}

installkernel() {
    instmods overlay squashfs loop
}

install() {
    local pybin pydir
    pybin=$(readlink -f /usr/bin/python3)
    inst_multiple "$pybin" chroot mount umount blkid losetup udevadm cp mkdir modprobe
    ln_r "$pybin" /usr/bin/python3
    # The standard library (without tests, GUI and packaging tools); compiled caches kept
    # because compiling at every boot costs seconds under emulation.
    pydir="/usr/lib/$(basename "$pybin")"
    mkdir -p "${initdir}/usr/lib"
    tar -C / --exclude='*/test' --exclude='*/tests' --exclude='*/idlelib' \
        --exclude='*/tkinter' --exclude='*/turtledemo' --exclude='*/ensurepip' \
        --exclude='*/lib2to3' --exclude='*/pydoc_data' --exclude='*/distutils' \
        --exclude='*/config-3*' -cf - "${pydir#/}" | tar -C "${initdir}" -xf -
    inst_simple "$moddir/immucore.service" "${systemdsystemunitdir}/immucore.service"
    inst_simple "$moddir/immucore-root.service" "${systemdsystemunitdir}/immucore-root.service"
    inst_simple "$moddir/immucore-layout.service" "${systemdsystemunitdir}/immucore-layout.service"
    $SYSTEMCTL -q --root "$initdir" enable immucore.service immucore-root.service \
        immucore-layout.service
}
