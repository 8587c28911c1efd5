"""containerd 1.6's default seccomp profile (``contrib/seccomp`` ``DefaultProfile``), as data.

:func:`default_profile` is the ``linux.seccomp`` a CRI container with ``RuntimeDefault`` gets:
errno for everything, except the syscalls below; which extra syscalls are allowed depends on
the container's bounding capabilities (so it is computed after capabilities are final), the
machine's architecture and the kernel version (``ptrace`` from 4.8 on), as in containerd.
Without CAP_SYS_ADMIN, ``clone`` may not create namespaces and ``clone3`` fails with ENOSYS
(so libc falls back to ``clone``, whose flags the filter can see).
"""

from __future__ import annotations

import os
import platform
from typing import Any, Iterable

ENOSYS = 38

# CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
# CLONE_NEWCGROUP: the namespace flags clone may not carry without CAP_SYS_ADMIN
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                         | 0x40000000 | 0x02000000)

ALLOWED = tuple("""
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
    fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
    flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
    ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
    getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
    getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
    getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit
    io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
    landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
    listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
    membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2
    mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget
    msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat _newselect open
    openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
    pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
    process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead
    readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
    sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
    sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
    sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
    semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
    setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
    setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
    setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
    setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socket socketcall socketpair splice stat stat64 statfs
    statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
    timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
    utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
""".split())

# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and
# 0xffffffff (query)
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

# by platform.machine(): seccomp architectures, extra syscalls
ARCHES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "x86_64": (("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
               ("arch_prctl", "modify_ldt")),
    "aarch64": (("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
                ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
                 "cacheflush", "set_tls")),
    "s390x": (("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
              ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")),
    "ppc64le": ((), ("sync_file_range2", "swapcontext")),
    "riscv64": (("SCMP_ARCH_RISCV64",), ("riscv_flush_icache",)),
}

# syscalls a bounding capability unlocks (containerd's order)
BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
                      "fspick", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
                      "name_to_handle_at", "open_tree", "perf_event_open", "quotactl",
                      "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog",
                      "umount", "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}


def _allow(names: Iterable[str], args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", "args": list(args or [])}


def kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether the running kernel (or ``release``, e.g. "6.1.0-18-amd64") is at least
    ``major.minor``; an unparsable release counts as too old (containerd skips the rule)."""
    release = release if release is not None else os.uname().release
    parts = release.split(".")
    try:
        k = int(parts[0])
        m = int("".join(ch for ch in parts[1].split("-")[0] if ch.isdigit()) or "x")
    except (IndexError, ValueError):
        return False
    return (k, m) >= (major, minor)


def default_profile(bounding: Iterable[str], machine: str | None = None,
                    kernel_release: str | None = None) -> dict[str, Any]:
    """containerd's default profile for a process whose bounding set is ``bounding``."""
    machine = machine or platform.machine()
    arches, arch_extra = ARCHES.get(machine, ((), ()))
    syscalls = [_allow(ALLOWED)]
    syscalls += [_allow(["personality"], [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}])
                 for v in PERSONALITIES]
    if kernel_at_least(4, 8, kernel_release):
        syscalls.append(_allow(["ptrace"]))
    if arch_extra:
        syscalls.append(_allow(arch_extra))
    caps = list(bounding)
    for cap in caps:
        if cap in BY_CAPABILITY:
            syscalls.append(_allow(BY_CAPABILITY[cap]))
    if "CAP_SYS_ADMIN" not in caps:
        index = 1 if machine in ("s390", "s390x") else 0  # s390's clone swaps its arguments
        syscalls.append(_allow(["clone"], [{"index": index, "value": CLONE_NAMESPACE_FLAGS,
                                             "op": "SCMP_CMP_MASKED_EQ"}]))
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": ENOSYS})
    return {"defaultAction": "SCMP_ACT_ERRNO", "architectures": list(arches),
            "syscalls": syscalls}
