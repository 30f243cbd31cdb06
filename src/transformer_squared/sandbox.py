"""Run untrusted, model-generated Python (e.g. an MBPP candidate plus its asserts) in a separate, limited process.

Every call starts `sys.executable -I sandbox.py <config>`: this file run as a small bootstrap script (instead of a
`preexec_fn`, which is unsafe in a process with threads, as torch's are). The bootstrap sets up isolation, forks an
"init" and that forks the program (`python -I -B main.py` in a throw-away directory). Always, on POSIX:
- a new session and process group, killed with SIGKILL when the run ends (or the wall-clock timeout hits);
- rlimits: CPU seconds, address space, processes, file size (so stdout/stderr files are capped too), no core files;
- a minimal environment (PATH, LANG, HOME=TMPDIR=the workdir, PYTHONHASHSEED...), nothing else from os.environ;
- stdin is /dev/null; stdout/stderr go to unnamed files read back truncated to `output_bytes`.
On Linux, best effort (whatever the kernel permits; `_run` reports which ones took effect):
- as root: the program runs as a fresh uid/gid (random in a range no distribution uses, so concurrent sandboxes
  do not share the RLIMIT_NPROC budget, which root itself ignores), without groups or capabilities;
  when not root: an unprivileged user namespace, in which the program keeps the caller's uid but no capabilities;
- PR_SET_NO_NEW_PRIVS (setuid binaries grant nothing) and the highest OOM score;
- new network namespace (no interfaces but a down loopback: no network at all) and IPC namespace;
- new PID namespace with a fresh /proc: the program sees only its own processes, cannot signal anything outside,
  and when the program (or the init) exits, the kernel kills every process left in it, setsid() or not;
- new mount namespace: the whole filesystem read-only, a fresh size-limited tmpfs on /tmp holding the workdir,
  the caller's home hidden under an empty tmpfs (the interpreter is bound back if it lives there, e.g. pyenv).
Not provided: a seccomp syscall filter; hiding world-readable files (the program can read /etc, /usr, the project
if world-readable...); a disk or tmpfs quota beyond the tmpfs size; CPU time of all processes together (RLIMIT_CPU
is per process: the wall-clock timeout bounds the rest). Without namespaces (non-Linux, or a kernel or container
that forbids them) the program keeps the caller's uid, network and filesystem, and a process that leaves the
process group may outlive the run; on Windows only the timeout and the minimal environment remain.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

# uids 0x7A000000.. are unused by distributions, systemd (nspawn ends at 0x6FFFFFFF) and subuid allocators.
_UID_BASE, _UID_COUNT = 0x7A000000, 1 << 20
_PROGRAM = "main.py"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 5  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS
    max_processes: int = 32  # RLIMIT_NPROC (for the sandbox uid)
    output_bytes: int = 1 << 16  # stdout/stderr kept at most this many bytes each
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE, stdout/stderr included); /tmp holds 4x this


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None when timed out; -N when killed by signal N
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a Python program in the sandbox and wait for it (at most `limits.timeout_s`)."""
    return _run(source, limits)[0]


def passes(source: str, limits: SandboxLimits | None = None) -> bool:
    """Whether `source` runs in the sandbox and exits 0 in time."""
    return run_python(source, limits).ok


def _run(source: str, limits: SandboxLimits | None = None) -> tuple[SandboxResult, list[str]]:
    """run_python, plus the isolation features that took effect (e.g. ["uid", "net", "pid", "readonly"])."""
    limits = limits or SandboxLimits()
    workdir = tempfile.mkdtemp(prefix="t2-sandbox-")
    report_r, report_w = os.pipe() if os.name == "posix" else (-1, -1)
    try:
        with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as f:
            f.write(source)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               # -I makes the program's own interpreter ignore these; they are for any python it starts itself
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        python = os.path.realpath(sys.executable)  # a venv's symlink may sit where the sandbox uid cannot look
        # Unnamed files: the program cannot swap them for a symlink, and RLIMIT_FSIZE caps what it writes.
        with tempfile.TemporaryFile(dir=workdir) as out, tempfile.TemporaryFile(dir=workdir) as err:
            if os.name == "posix":
                config = {"report_fd": report_w, "parent": os.getpid(), "python": python, "workdir": workdir,
                          "prefix": os.path.realpath(sys.base_prefix), "home": os.path.expanduser("~"),
                          "uid": _UID_BASE + secrets.randbelow(_UID_COUNT), "limits": asdict(limits)}
                cmd = [python, "-I", os.path.abspath(__file__), json.dumps(config)]
                proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, pass_fds=(report_w,))
                os.close(report_w)
                report_w = -1
            else:  # no fork, setsid or rlimits: just a subprocess with a timeout
                env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
                proc = subprocess.Popen([python, "-I", "-B", _PROGRAM], cwd=workdir, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # The group id stays reserved while any member lives, so this cannot hit a stranger's group.
                try:
                    os.killpg(proc.pid, signal.SIGKILL) if os.name == "posix" else proc.kill()
                except OSError:
                    pass
                proc.wait()
            stdout, stderr = (_head(f, limits.output_bytes) for f in (out, err))
        report = _read_report(report_r)
        if "error" in report:  # the sandbox itself is broken (e.g. the interpreter is unreadable): not a 0 reward
            raise RuntimeError(f"sandbox setup failed: {report['error']}")
        returncode = None if timed_out else report.get("returncode", proc.returncode)
        return SandboxResult(returncode, stdout, stderr, timed_out), report.get("isolation", [])
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _head(f, n: int) -> str:
    f.seek(0)
    return f.read(n).decode("utf-8", "replace")


def _read_report(fd: int) -> dict:
    """Merge the JSON lines the bootstrap wrote (all writers are dead by now; never block regardless)."""
    if fd < 0:
        return {}
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    report: dict = {}
    for line in data.decode("utf-8", "replace").splitlines():
        report.update(json.loads(line))
    return report


# ------------------------------------------------------------------------------------ bootstrap (child side)
# Everything below runs in the sandbox's own processes, started as `python -I sandbox.py <config>`.

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, SYS_MOUNT_SETATTR, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 1, 38, 442, 0x8000, 1
_libc = ctypes.CDLL(None, use_errno=True)


def _call(name: str, *args) -> None:
    """Call a libc function; OSError on failure (or when this libc has no such function, e.g. on macOS)."""
    fn = getattr(_libc, name, None)
    if fn is None or fn(*args) != 0:
        err = ctypes.get_errno() if fn else 38  # ENOSYS
        raise OSError(err, f"{name}{args[:3]}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    b = lambda s: None if s is None else s.encode()  # noqa: E731
    _call("mount", b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data))


def _set_readonly(path: str, readonly: bool, recursive: bool) -> None:
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    _call("syscall", ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(-100), path.encode(),  # -100: AT_FDCWD
          ctypes.c_long(AT_RECURSIVE if recursive else 0), attr, ctypes.c_long(ctypes.sizeof(attr)))


def _try(features: list[str], name: str, fn, *args) -> bool:
    try:
        fn(*args)
        features.append(name)
        return True
    except OSError:
        return False


def _bootstrap(cfg: dict) -> None:
    report = cfg["report_fd"]
    os.set_inheritable(report, False)  # the program (after exec) must not be able to forge the report

    def send(**msg) -> None:
        os.write(report, (json.dumps(msg) + "\n").encode())

    # If the caller dies mid-run, so do we (and, as the PID namespace's parent, everything in it).
    _try([], "", _call, "prctl", PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != cfg["parent"]:
        os._exit(1)
    root, uid, gid, features = os.geteuid() == 0, os.getuid(), os.getgid(), []
    if not root and _try(features, "user", _call, "unshare", CLONE_NEWUSER):
        for name, text in [("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")]:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    for name, flag in [("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("mount", CLONE_NEWNS), ("pid", CLONE_NEWPID)]:
        _try(features, name, _call, "unshare", flag)
    # Not root, no user namespace: RLIMIT_NPROC counts all the caller's processes, so allow that many more.
    nproc = cfg["limits"]["max_processes"] + (0 if root or "user" in features else _count_processes(uid))
    init = os.fork()  # in a new PID namespace, this child is its pid 1
    if init == 0:
        try:
            _init(cfg, root, nproc, features, send)
        except BaseException as e:  # noqa: BLE001 - a broken sandbox must be reported, never look like a 0 reward
            send(error=f"{type(e).__name__}: {e}"[:2000])
        os._exit(1)
    os.waitpid(init, 0)
    os._exit(0)


def _init(cfg: dict, root: bool, nproc: int, features: list[str], send) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1, signals from inside without a handler are dropped
    _try([], "", _call, "prctl", PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    os.umask(0o022)
    uid = cfg["uid"] if root else os.getuid()
    workdir, program = cfg["workdir"], os.path.join(cfg["workdir"], _PROGRAM)
    if "mount" in features:
        with open(program, "rb") as f:
            source = f.read()
        prefix = os.open(cfg["prefix"], os.O_PATH)  # the interpreter's tree, to bind back after hiding things
        if _try(features, "tmp", _private_filesystem, cfg, root, prefix):
            workdir = os.path.join("/tmp", os.path.basename(workdir))  # now on the fresh tmpfs
            os.mkdir(workdir, 0o700)
            program = os.path.join(workdir, _PROGRAM)
            with open(program, "wb") as f:
                f.write(source)
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir
            _try(features, "readonly", _set_readonly, "/", True, True)
            _try([], "", _set_readonly, "/tmp", False, False)  # only the fresh /tmp stays writable
            if "pid" in features:
                _try(features, "proc", _mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if root:
        for path in (workdir, program):
            os.chown(path, uid, uid)
        features.append("uid")
    send(isolation=features)
    child = os.fork()
    if child == 0:
        os.chdir(workdir)
        _exec_program(cfg, root, uid, nproc, program, send)
    while True:  # also reap orphans that the kernel re-parents to us
        pid, status = os.wait()
        if pid == child:
            send(returncode=os.waitstatus_to_exitcode(status))
            os._exit(0)


def _private_filesystem(cfg: dict, root: bool, prefix_fd: int) -> None:
    """Private mount propagation, a fresh /tmp, the caller's home hidden, the interpreter reachable."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # first, so no mount below ever shows up on the host
    mb = 4 * cfg["limits"]["file_mb"]
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={mb}m,nr_inodes=4096")
    if cfg["home"] not in ("", "/") and os.path.isdir(cfg["home"]):
        _mount("tmpfs", cfg["home"], "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    # Bind the interpreter's tree back at its own path (binaries often carry an absolute RUNPATH) where hiding
    # took it away or, as root, a directory on the way is closed to others (e.g. /root/.pyenv with /root 0700).
    path, prefix = "/", cfg["prefix"]
    for part in prefix.strip("/").split("/")[:-1]:
        path = os.path.join(path, part)
        if not os.path.isdir(path):
            break
        if root and not os.stat(path).st_mode & 0o001:
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
            break
    else:
        if os.path.isdir(prefix):
            return
    os.makedirs(prefix, exist_ok=True)
    _mount(f"/proc/self/fd/{prefix_fd}", prefix, None, MS_BIND | MS_REC)


def _exec_program(cfg: dict, root: bool, uid: int, nproc: int, program: str, send) -> None:
    import resource

    lim = cfg["limits"]
    for res, value in [(resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_AS, lim["memory_mb"] << 20),
                       (resource.RLIMIT_FSIZE, lim["file_mb"] << 20), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, nproc)]:
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):  # e.g. RLIMIT_AS on macOS
            pass
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # under memory pressure, kill the sandbox before the trainer
    except OSError:
        pass
    try:
        if root:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _try([], "", _call, "prctl", PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0)
        os.execv(cfg["python"], [cfg["python"], "-I", "-B", "-X", "utf8", program])
    except BlockingIOError:  # EAGAIN: over RLIMIT_NPROC already; the program's failure, not the sandbox's
        os.write(2, b"sandbox: too many processes\n")
    except BaseException as e:  # noqa: BLE001
        send(error=f"cannot start {cfg['python']} as uid {os.getuid()}: {e}"[:2000])
    os._exit(127)


def _count_processes(uid: int) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{pid}/status") as f:
                count += any(line.split()[:2] == ["Uid:", str(uid)] for line in f)
        except OSError:
            pass
    return count


if __name__ == "__main__":
    _bootstrap(json.loads(sys.argv[1]))
