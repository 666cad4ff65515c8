from reconciler.system.host import Mount, mount_for, parse_listening, parse_meminfo, parse_mountinfo

MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 22 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
42 25 0:39 / /dev/shm/reconciler/my\\040stack rw,relatime - tmpfs reconciler-x rw,size=65536k,mode=755
"""


def test_mountinfo_parses_fstype_options_and_escaped_spaces() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[2] == Mount("/dev/shm/reconciler/my stack", "tmpfs", "rw,size=65536k,mode=755")


def test_mount_for_picks_the_longest_mount_point() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_for("/dev/shm/reconciler/my stack/postgres", mounts).options.endswith("mode=755")  # type: ignore[union-attr]
    assert mount_for("/dev/shm/other", mounts).mount_point == "/dev/shm"  # type: ignore[union-attr]
    assert mount_for("/dev/shmx", mounts).mount_point == "/"  # type: ignore[union-attr]


def test_meminfo() -> None:
    info = parse_meminfo("MemTotal:       24684092 kB\nMemAvailable:   2000 kB\nHugePages_Total:       0\n")
    assert info == {"MemTotal": 24684092 * 1024, "MemAvailable": 2000 * 1024, "HugePages_Total": 0}


def test_listening_sockets() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:D8D0 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 77 1\n"
        "   1: 0100007F:D8D1 0100007F:0001 01 00000000:00000000 00:00000000 00000000   101        0 78 1\n"
    )
    assert parse_listening(table) == {"77": 0xD8D0}
