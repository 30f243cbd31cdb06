"""Run untrusted, model-generated Python (e.g. an MBPP candidate plus its asserts) in a separate, limited process.

`run_python` starts `sys.executable -I` on this file, run as a small bootstrap script rather than a `preexec_fn`
(unsafe in a process with threads, as torch's are, and it could not stay to wait for the program anyway).
The bootstrap isolates what it can, forks an init, and the init forks and execs the program
(`python -I -B main.py` in a throw-away directory), waits for it and reports its exit status.

Always (POSIX): a new session and process group, SIGKILLed when the run ends or the wall-clock timeout hits;
rlimits on CPU seconds (per process), address space, processes, file size (stdout/stderr files included), no core
files; a minimal environment (PATH, LANG, HOME=TMPDIR=the workdir, PYTHONHASHSEED...), nothing else from
os.environ; stdin /dev/null; stdout/stderr in unnamed files, read back truncated to `output_bytes`.

On Linux, each of these where the kernel permits it (`_run` reports which took effect):
- uid: as root, the program runs as a fresh random uid/gid from a range nobody uses (RLIMIT_NPROC is not enforced
  for root, and a per-run uid keeps concurrent runs from sharing one process budget), with no groups. Not root:
  an unprivileged user namespace; the program keeps the caller's uid, but no capabilities. Both: NO_NEW_PRIVS
  (setuid binaries grant nothing), the OOM killer's first choice.
- net, ipc: new network namespace (only a down loopback: no network at all) and IPC namespace.
- pid, proc: new PID namespace with a fresh /proc: the program sees and can signal only its own processes, and
  when it exits (or the init is killed), the kernel kills everything left in it, setsid() or not. Without one,
  the init is a child subreaper and kills every descendant after the program exits ("reaper"; not proof
  against a program running as the caller's uid, which may kill the init first).
- mount, tmp, readonly: new mount namespace: the whole filesystem read-only (mount_setattr, Linux >= 5.12)
  except fresh size-limited tmpfs on /tmp (holding the workdir) and /dev/shm; the caller's home and /run (with
  the sockets of D-Bus, Docker...) hidden under empty tmpfs; the interpreter's tree bound back read-only where
  hiding took it away (e.g. pyenv in /root); folders the caller names (`hide`, e.g. the dataset) hidden likewise.
Not provided: a seccomp filter; hiding world-readable files (/etc, /usr, a world-readable project tree...); a
limit on total CPU of all processes (the wall clock bounds it); a quota beyond the tmpfs sizes. Without
namespaces (non-Linux; a container or kernel that forbids them) the program keeps the caller's network and
filesystem and, when not root, its uid (so it may signal or read what the caller can); as root, the interpreter
must then be reachable by any uid. On Windows only the timeout and the minimal environment remain.
The exit status and output of a hostile program are whatever it wants them to be: they contain it, they do not
judge it. Unit-test rewards are decided from values by tasks/judge.py (its docstring states that threat model).
A sandbox that cannot start the program at all (e.g. an unreadable interpreter) raises RuntimeError rather than
returning a failed result, so a broken setup never passes for 0 rewards.
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

# Sandbox uids as root: 0x7A000000.. is used by no distribution, systemd (nspawn ends at 0x6FFFFFFF) or subuid tool.
_UID_BASE, _UID_COUNT = 0x7A000000, 1 << 20
_PROGRAM = "main.py"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 5  # RLIMIT_CPU, per process
    memory_mb: int = 1024  # RLIMIT_AS
    max_processes: int = 32  # RLIMIT_NPROC (for the sandbox uid)
    output_bytes: int = 1 << 16  # stdout/stderr kept at most this many bytes each
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE, stdout/stderr too); each tmpfs holds 4x this


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None when timed out; -N when killed by signal N
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_python(source: str, limits: SandboxLimits | None = None, hide: tuple[str, ...] = ()) -> SandboxResult:
    """Run `source` as a Python program in the sandbox and wait for it (at most `limits.timeout_s`).

    `hide`: files or folders the program must not read (e.g. a dataset with the expected answers); each folder,
    and each file's folder, is covered by an empty tmpfs where there is a mount namespace ("hide" isolation).
    """
    return _run(source, limits, hide)[0]


def passes(source: str, limits: SandboxLimits | None = None) -> bool:
    """Whether `source` runs in the sandbox and exits 0 in time."""
    return run_python(source, limits).ok


def _run(source: str, limits: SandboxLimits | None = None,
         hide: tuple[str, ...] = ()) -> tuple[SandboxResult, list[str]]:
    """run_python, plus the isolation features that took effect (e.g. ["net", "pid", "readonly", "uid"])."""
    limits = limits or SandboxLimits()
    workdir = tempfile.mkdtemp(prefix="t2-sandbox-")
    report_r, report_w = os.pipe() if os.name == "posix" else (-1, -1)
    try:
        with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as f:
            f.write(source)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               # -I makes the program's interpreter ignore these; they are for any python it starts itself
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        python = os.path.realpath(sys.executable)  # a venv's symlink may sit where the sandbox uid cannot look
        # Unnamed files: the program cannot swap them for a symlink, and RLIMIT_FSIZE caps what it writes.
        with tempfile.TemporaryFile(dir=workdir) as out, tempfile.TemporaryFile(dir=workdir) as err:
            if os.name == "posix":
                config = {"report_fd": report_w, "parent": os.getpid(), "python": python, "workdir": workdir,
                          "prefix": os.path.realpath(sys.base_prefix), "home": os.path.expanduser("~"),
                          "uid": _UID_BASE + secrets.randbelow(_UID_COUNT), "limits": asdict(limits),
                          "hide": [os.path.realpath(p) for p in hide]}
                # Run this file as a script, via runpy: on 3.10, -I would still put this package's directory
                # first on sys.path, where a future module named like a stdlib one would shadow it.
                run_file = "import runpy, sys; del sys.argv[0]; runpy.run_path(sys.argv[0], run_name='__main__')"
                cmd = [python, "-I", "-c", run_file, os.path.abspath(__file__), json.dumps(config)]
                proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, pass_fds=(report_w,))
                os.close(report_w)
                report_w = -1
            else:  # Windows: no fork, setsid or rlimits, just a subprocess with a timeout
                env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
                proc = subprocess.Popen([python, "-I", "-B", _PROGRAM], cwd=workdir, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()  # the bootstrap has the init kill the program and clean up, then returns
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                # The group id stays reserved while any member lives, so this cannot hit a stranger's group.
                try:
                    os.killpg(proc.pid, signal.SIGKILL) if os.name == "posix" else proc.kill()
                except OSError:
                    pass
                proc.wait()
            out.seek(0)
            err.seek(0)
            stdout, stderr = (f.read(limits.output_bytes).decode("utf-8", "replace") for f in (out, err))
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


def _read_report(fd: int) -> dict:
    """Merge the JSON lines the bootstrap wrote (its processes are all gone by now; never block regardless)."""
    if fd < 0:
        return {}
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    return {key: value for line in data.splitlines() for key, value in json.loads(line).items()}


# ------------------------------------------------------------------------------------ bootstrap (child side)
# Everything below runs in the sandbox's own processes: this file run as a script, with the config from _run.

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 1 << 28, 1 << 29, 1 << 30
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 1 << 12, 1 << 14, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
_WRITABLE = ("/tmp", "/dev/shm")  # fresh tmpfs, the only writable places; /tmp holds the workdir
_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
_report_fd = -1  # write end of the pipe to the caller; close-on-exec, so the program never holds it


def _send(**msg) -> None:
    os.write(_report_fd, (json.dumps(msg) + "\n").encode())


def _call(name: str, *args) -> None:
    """Call a libc function; OSError on failure (or when this libc has no such function, e.g. on macOS)."""
    fn = getattr(_libc, name, None)
    if fn is None or fn(*args) != 0:
        err = ctypes.get_errno() if fn else 38  # ENOSYS
        raise OSError(err, f"{name}{args[:3]}: {os.strerror(err)}")


def _ok(fn, *args) -> bool:
    """Best effort: whether fn(*args) worked; OSError means this kernel or OS does not permit it here."""
    try:
        fn(*args)
        return True
    except OSError:
        return False


def _prctl(option: int, value: int) -> bool:
    return _ok(_call, "prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    b = lambda s: None if s is None else s.encode()  # noqa: E731
    _call("mount", b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data))


def _set_readonly(path: str, readonly: bool, recursive: bool) -> None:
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    _call("syscall", ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), path.encode(),
          ctypes.c_long(AT_RECURSIVE if recursive else 0), attr, ctypes.c_long(ctypes.sizeof(attr)))


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:  # already gone
        pass


def _bootstrap(cfg: dict) -> None:
    global _report_fd
    _report_fd = cfg["report_fd"]
    os.set_inheritable(_report_fd, False)  # the program (after exec) must not be able to forge the report
    # If the caller dies mid-run, so do we (and, as the PID namespace's parent, everything in it).
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent"]:
        os._exit(1)
    root, uid, gid, features = os.geteuid() == 0, os.getuid(), os.getgid(), []
    if not root and _ok(_call, "unshare", CLONE_NEWUSER):  # gives the capabilities for the namespaces below
        features.append("user")
        for name, text in [("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")]:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    for name, flag in [("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("mount", CLONE_NEWNS), ("pid", CLONE_NEWPID)]:
        if _ok(_call, "unshare", flag):
            features.append(name)
    # Not root: RLIMIT_NPROC counts all the caller's processes (kernels < 5.14 even in a user namespace).
    nproc = cfg["limits"]["max_processes"] + (0 if root else len(_processes(uid=uid)))
    init = os.fork()  # in a new PID namespace, this child is its pid 1
    if init == 0:
        _init(cfg, root, nproc, features)
    signal.signal(signal.SIGTERM, lambda *_: _kill(init, signal.SIGTERM))  # timeout: see _run
    _, status = os.waitpid(init, 0)  # returns once the init is gone, and with it everything in its PID namespace
    os._exit(0 if status == 0 else 125)  # the init was killed before it could report the program's exit


def _init(cfg: dict, root: bool, nproc: int, features: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1, signals from inside without a handler are dropped
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(0o022)
    uid = cfg["uid"] if root else os.getuid()
    workdir, program = cfg["workdir"], os.path.join(cfg["workdir"], _PROGRAM)
    if "mount" in features:
        with open(program, "rb") as f:
            source = f.read()
        prefix = os.open(cfg["prefix"], os.O_PATH)  # the interpreter's tree, to bind back after hiding things
        if _ok(_private_filesystem, cfg, root, prefix):
            features.append("tmp")
            workdir = os.path.join("/tmp", os.path.basename(workdir))
            os.mkdir(workdir, 0o700)
            program = os.path.join(workdir, _PROGRAM)
            with open(program, "wb") as f:
                f.write(source)
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir
            if _ok(_set_readonly, "/", True, True):
                features.append("readonly")
                for path in filter(os.path.ismount, _WRITABLE):
                    _set_readonly(path, False, False)
        if "pid" in features and _ok(_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
            features.append("proc")
    if root:
        for path in (workdir, program):
            os.chown(path, uid, uid)
        features.append("uid")
    if _prctl(PR_SET_CHILD_SUBREAPER, 1):  # orphans are re-parented to us, not to the host's init, setsid() or not
        features.append("reaper")
    _send(isolation=features)
    child = 0
    # Timeout (the bootstrap forwards the caller's SIGTERM): kill the program; the cleanup below follows.
    signal.signal(signal.SIGTERM, lambda *_: child > 0 and _kill(child, signal.SIGKILL))
    child = os.fork()
    if child == 0:
        os.chdir(workdir)
        _exec_program(cfg, root, uid, nproc, program)
    while True:  # also reap orphans re-parented to us
        pid, status = os.wait()
        if pid == child:
            break
    # With a PID namespace, our exit kills all that is left in it. Without, kill our children (all orphans land
    # here) until there are none; each round kills the processes that could still fork, so this ends.
    while "pid" not in features and "reaper" in features:
        for pid in _processes(ppid=os.getpid()):
            _kill(pid, signal.SIGKILL)
        try:
            os.wait()
        except ChildProcessError:
            break
    _send(returncode=os.waitstatus_to_exitcode(status))
    os._exit(0)


def _private_filesystem(cfg: dict, root: bool, prefix_fd: int) -> None:
    """Private mount propagation, fresh writable tmpfs, secrets hidden, the interpreter still reachable."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # first, so no mount below ever shows up on the host
    # Hidden under an empty tmpfs: the caller's home, and /run with its sockets (D-Bus, Docker, user runtime dirs).
    hidden = [p if os.path.isdir(p) else os.path.dirname(p) for p in cfg.get("hide", []) if os.path.exists(p)]
    for path in dict.fromkeys(os.path.realpath(p) for p in (cfg["home"], "/run", "/var/run", *hidden)):
        if path != "/" and os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    mb = 4 * cfg["limits"]["file_mb"]
    for path in _WRITABLE:
        if path == "/tmp" or os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={mb}m,nr_inodes=4096")
    # Bind the interpreter's tree back, read-only, at its own path (binaries may carry an absolute RUNPATH) where
    # hiding took it away or, as root, a directory on the way is closed to others (e.g. /root 0700 for pyenv).
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
    _mount(None, prefix, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _exec_program(cfg: dict, root: bool, uid: int, nproc: int, program: str) -> None:
    import resource  # POSIX only, like the rest of the bootstrap

    lim = cfg["limits"]
    for res, soft, hard in [(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1),  # SIGXCPU, then SIGKILL
                            (resource.RLIMIT_AS, lim["memory_mb"] << 20, lim["memory_mb"] << 20),
                            (resource.RLIMIT_FSIZE, lim["file_mb"] << 20, lim["file_mb"] << 20),
                            (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NPROC, nproc, nproc)]:
        try:
            resource.setrlimit(res, (soft, hard))
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
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries (su, sudo...) grant nothing
        os.execv(cfg["python"], [cfg["python"], "-I", "-B", "-X", "utf8", program])
    except BlockingIOError:  # EAGAIN: over RLIMIT_NPROC already; the program's failure, not the sandbox's
        os.write(2, b"sandbox: too many processes\n")
    except OSError as e:
        _send(error=f"cannot start {cfg['python']} as uid {os.getuid()}: {e}"[:1000])
    os._exit(127)


def _processes(uid: int | None = None, ppid: int | None = None) -> list[int]:
    """Pids (from /proc, empty without it) owned by `uid` or whose parent is `ppid`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            if uid is not None and os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(int(pid))
            elif ppid is not None:
                with open(f"/proc/{pid}/stat") as f:  # "pid (comm) state ppid ...": comm may hold spaces
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        found.append(int(pid))
        except (OSError, ValueError, IndexError):  # it exited meanwhile
            pass
    return found


if __name__ == "__main__":
    try:  # in the bootstrap, the init, or the program's process before exec
        _bootstrap(json.loads(sys.argv[1]))
    except BaseException as e:  # noqa: BLE001 - a broken sandbox must be reported, never look like a 0 reward
        _send(error=f"{type(e).__name__}: {e}"[:1000])
    os._exit(1)
