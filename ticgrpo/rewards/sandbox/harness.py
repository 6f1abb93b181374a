"""The trusted side of every execution: stdlib-only code run as `python -I -S -B -c HARNESS mode
limits setup`, inside the sandbox, before the program.

It reads its files (from inherited fds or the cwd), builds the filesystem at level unshare
("jail"), sets the resource limits, then runs solution.py; in "asserts" mode it afterwards
evaluates each operand and writes `<nonce> <json [index, kind, payload]>` lines to the answer
channel (its original stdout; the program's own stdout is redirected to stderr). The limits of
the plain-data encoding (`plain`: nesting 20) are the ones `protocol.decode_value` enforces.
"""

from __future__ import annotations

HARNESS = r"""
import json, os, resource, sys
mode, limits, setup = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
files = {}
for name, fd in setup["fds"].items():
    with os.fdopen(fd, "rb") as f:
        files[name] = f.read()
for name in setup["local"]:
    with open(name, "rb") as f:
        files[name] = f.read()

def jail(cfg):
    import ctypes, platform
    libc = ctypes.CDLL(None, use_errno=True)
    def check(rc, what):
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, "sandbox setup: %s: %s" % (what, os.strerror(err)))
    def b(s):
        return None if s is None else s.encode()
    def mount(src, dst, fstype, flags, data=None):
        check(libc.mount(b(src), b(dst), b(fstype), ctypes.c_ulong(flags), b(data)), "mount " + dst)
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    def bind_ro(src, dst):
        mount(src, dst, None, BIND | REC)
        kept, flags = 0, os.statvfs(dst).f_flag
        for st, ms in ((os.ST_NOSUID, NOSUID), (os.ST_NODEV, NODEV), (os.ST_NOEXEC, NOEXEC),
                       (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21)):
            kept |= ms if flags & st else 0
        mount(None, dst, None, REMOUNT | BIND | RDONLY | kept)  # locked flags must be kept
    root = cfg["root"]
    mount(None, "/", None, REC | PRIVATE)
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=%d,mode=755" % cfg["size"])
    for path, kind, target in cfg["tree"]:
        dst = root + path
        if kind == "link":
            os.symlink(target, dst)
        else:
            os.makedirs(dst, exist_ok=True)
            bind_ro(path, dst)
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    os.makedirs(root + "/dev", exist_ok=True)
    for dev in cfg["devices"]:
        open(root + "/dev/" + dev, "w").close()
        mount("/dev/" + dev, root + "/dev/" + dev, None, BIND)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.makedirs(root + "/sandbox/.tmp")
    os.chmod(root + "/sandbox/.tmp", 0o1777)
    os.symlink("/sandbox/.tmp", root + "/tmp")
    os.symlink("/sandbox/.tmp", root + "/dev/shm")
    for name, data in files.items():
        with open(root + "/sandbox/" + name, "wb") as f:
            f.write(data)
    os.chdir(root)
    os.mkdir(".old")
    pivot_root = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}[platform.machine()]
    check(libc.syscall(pivot_root, b".", b".old"), "pivot_root")
    os.chroot(".")
    check(libc.umount2(b"/.old", 2), "detach the old root")  # MNT_DETACH
    os.rmdir("/.old")
    os.chdir("/sandbox")
    cap = 0  # drop every capability for good: the bounding set, so that an exec regains none
    while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP until EINVAL
        cap += 1
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset")

if setup["jail"]:
    jail(setup["jail"])
    del jail
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
src = files["solution.py"].decode("utf-8")
if mode == "stdio":
    del json, limits, mode, setup, files
    sys.argv = ["solution.py"]
    exec(compile(src, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    raise SystemExit(0)
import builtins, math
nonce = sys.stdin.readline().strip()
exprs = json.loads(files["tests.json"].decode("utf-8"))
del files
# everything the answers depend on is bound now, before the program can patch it
_write, _type, _dumps, _ch, _eval, _compile, _repr = os.write, type, json.dumps, os.dup(1), eval, compile, repr
_builtins = dict(vars(builtins))
os.dup2(2, 1)
def plain(v, depth=0, _type=type, _repr=repr, _str=str, _hex=bytes.hex, _isfinite=math.isfinite,
          _seqs=(list, tuple, set, frozenset), _dict=dict, _len=len):
    t = _type(v)
    if v is None or t is bool:
        return v
    if t is int:
        return ["int", _str(v)]
    if t is float:
        return ["float", _repr(v)]
    if t is str:
        return ["str", v]
    if t is bytes:
        return ["bytes", _hex(v)]
    if t is complex:
        return ["complex", [_repr(v.real), _repr(v.imag)]]
    if depth < 20 and t in _seqs:
        return [t.__name__, [plain(x, depth + 1) for x in v]]
    if depth < 20 and t is _dict:
        return ["dict", [[plain(k, depth + 1), plain(x, depth + 1)] for k, x in v.items()]]
    raise TypeError("not plain data")
def answer(i, kind, payload):
    _write(_ch, (nonce + " " + _dumps([i, kind, payload]) + "\n").encode())
ns = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(src, "solution.py", "exec"), ns)
except MemoryError:
    answer(-1, "violation", "MemoryError")
except BaseException as exc:
    sys.stderr.write("solution raised %s\n" % _type(exc).__name__)
env = dict(ns)
env["__builtins__"] = _builtins
for i, expr in enumerate(exprs):
    try:
        answer(i, "value", plain(_eval(_compile(expr, "test", "eval"), env)))
    except MemoryError:
        answer(i, "violation", "MemoryError")
    except BaseException as exc:
        answer(i, "error", _type(exc).__name__)
os._exit(0)
"""
