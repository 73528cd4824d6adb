# The model-based randomized test (see model.rs): random socket operations, each connect
# judged against a model of which socket holds which 4-tuple, the model being what the kernel
# itself reports (getsockname/getpeername) after each operation.
#
#   python3 model.py SEED OPS COUNTERS_PIN COUNTER_SLOTS '{"checked": 0, ...}' WILDCARD_CHECKED
#
# A connect the guard counted as checked that made a duplicate is a miss. A refusal is a false
# rejection unless another socket holds the tuple, or it is the documented exception: a claim
# made at most 10 ms before by a socket that has since disconnected (connect(AF_UNSPEC), which
# runs no hook) or whose connect failed after the hook, refusing a socket born before it.
# Prints one JSON summary.
import ctypes
import errno
import json
import os
import random
import socket
import struct
import sys
import time

SEED, OPS, PIN, SLOTS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
COUNTER = json.loads(sys.argv[5])
WILDCARD_CHECKED = sys.argv[6] == "1"
NOT_CHECKED = [n for n in COUNTER if n in (
    "wildcard", "wildcard_new_netns", "wildcard_unmodeled", "autobind", "autobind_unique",
    "family_mismatch", "multicast", "device_bound")]
FRESH_NS = 10_000_000
SLACK_NS = 3_000_000

LIBC = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321  # x86_64
BPF_MAP_LOOKUP_ELEM, BPF_OBJ_GET = 1, 7


class Attr(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint64), ("b", ctypes.c_uint64), ("c", ctypes.c_uint64),
                ("d", ctypes.c_uint64)]


def bpf(cmd, attr):
    ret = LIBC.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return ret


def possible_cpus():
    text = open("/sys/devices/system/cpu/possible").read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


path = ctypes.create_string_buffer(PIN.encode())
MAP_FD = bpf(BPF_OBJ_GET, Attr(ctypes.addressof(path), 0, 0, 0))
CPUS = possible_cpus()
KEY = ctypes.c_uint32(0)
VALUE = ctypes.create_string_buffer(CPUS * SLOTS * 8)


def counters():
    bpf(BPF_MAP_LOOKUP_ELEM, Attr(MAP_FD, ctypes.addressof(KEY), ctypes.addressof(VALUE), 0))
    words = struct.unpack(f"={CPUS * SLOTS}Q", VALUE.raw)
    return {name: sum(words[cpu * SLOTS + i] for cpu in range(CPUS))
            for name, i in COUNTER.items()}


# The universe: few addresses and ports, so that tuples collide often.
LOCAL4 = ["127.0.0.1", "127.0.0.2", "0.0.0.0"]
LOCAL6 = ["::1", "fd00::1", "::"]
MAPPED = ["::ffff:127.0.0.1", "::ffff:127.0.0.2"]
PORTS = [4000, 4001]
PEERS4 = [("127.0.0.1", 53), ("127.0.0.3", 53), ("127.0.0.1", 54), ("0.0.0.0", 53)]
PEERS6 = [("::1", 53), ("fd00::2", 53), ("::", 53)]
PEERSM = [("::ffff:127.0.0.1", 53), ("::ffff:127.0.0.3", 53), ("::ffff:0.0.0.0", 53)]
MAX_SOCKETS = 24

rng = random.Random(SEED)
now = time.monotonic_ns


def canon(addr):
    """An address as the tuple's family has it: v4-mapped IPv6 is IPv4."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


class Sock:
    serial = 0

    def __init__(self):
        self.family = rng.choice([4, 6])
        self.v6only = self.family == 6 and rng.random() < 0.3
        self.born = now()
        self.s = socket.socket(socket.AF_INET if self.family == 4 else socket.AF_INET6,
                               socket.SOCK_DGRAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == 6:
            self.s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(self.v6only))
        self.bound = None
        self.tuple = None
        # (tuple, earliest, latest time) of the claim its record points at, as the guard
        # keeps it: replaced by each checked connect that claims (also one the kernel fails
        # after the hook), kept by unchecked connects and by disconnects, released on close.
        self.claim = None
        Sock.serial += 1
        self.id = Sock.serial
        self.history = [(report["ops"], "new", self.family, "v6only" if self.v6only else "")]
        everyone[self.id] = self

    def held(self):
        try:
            local, peer = self.s.getsockname(), self.s.getpeername()
        except OSError:
            return None
        return (canon(local[0]), local[1], canon(peer[0]), peer[1])


def probe_source(peer):
    """The source the kernel picks for `peer` from a wildcard socket: one unguarded-in-effect
    probe (auto-bound, no reuse flags: the guard only counts it)."""
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    t = socket.socket(family, socket.SOCK_DGRAM)
    try:
        t.connect((peer, 9))
        return canon(t.getsockname()[0])
    finally:
        t.close()


def intended(sock, peer):
    """The tuple the kernel would store for this connect (the hook's normalisations). The
    local address is the socket's now: a wildcard-bound socket that connected has its source
    as its address until it disconnects."""
    local, port = sock.s.getsockname()[:2]
    pa, pp = peer
    if sock.family == 6 and pa == "::":
        pa = "::ffff:127.0.0.1" if local.startswith("::ffff:") else "::1"
    v4 = sock.family == 4 or pa.startswith("::ffff:")
    if v4:
        la = "0.0.0.0" if local in ("0.0.0.0", "::") else canon(local)
        pa = canon(pa)
        if pa == "0.0.0.0":
            pa = la if la != "0.0.0.0" else "127.0.0.1"
            la = la if la != "0.0.0.0" else "127.0.0.1"
    else:
        la = local
    if la in ("0.0.0.0", "::"):
        la = probe_source(pa)
    return (canon(la), port, canon(pa), pp)


live = []
everyone = {}
recent = []
start = now()
report = {"seed": SEED, "ops": 0, "connects": 0, "checked": 0, "refused": 0,
          "false_rejections": [], "misses": [], "tolerated": 0,
          "unchecked_duplicates": {}, "errors": {}}


def connect(sock, peer):
    family = socket.AF_INET6 if sock.family == 6 else socket.AF_INET
    before_t = now()
    before = counters()
    try:
        sock.s.connect(peer if family == socket.AF_INET else (peer[0], peer[1], 0, 0))
        rc = "ok"
    except OSError as e:
        rc = errno.errorcode[e.errno]
    after = counters()
    after_t = now()
    delta = {k: after[k] - before[k] for k in after}
    reasons = [r for r in NOT_CHECKED if delta.get(r)]
    checked = delta["checked"] > 0 and not reasons
    report["connects"] += 1
    report["checked"] += int(checked)
    what = {"op": report["ops"], "socket": sock.id, "family": sock.family,
            "bound": sock.bound, "peer": peer}
    moved = {k: v for k, v in delta.items() if v}
    sock.history.append((report["ops"], "connect", peer, rc, moved, sock.held()))
    recent.append((report["ops"], sock.id, sock.bound, peer, rc, moved, (before_t - start) // 1000))
    del recent[:-40]
    already = sock.tuple
    if rc == "ok":
        t = sock.held()
        holders = [o.id for o in live if o is not sock and o.tuple == t]
        sock.tuple = t
        if checked and already != t:
            sock.claim = (t, before_t, after_t)
        # Connecting again to the tuple it has changes nothing (a duplicate made before, by
        # an unchecked connect, is not this one's doing).
        if holders and already != t:
            if checked:
                report["misses"].append({**what, "tuple": t, "holders": holders,
                                         "histories": {i: everyone[i].history
                                                       for i in [sock.id] + holders}})
            else:
                for r in reasons or ["not_counted"]:
                    report["unchecked_duplicates"][r] = report["unchecked_duplicates"].get(r, 0) + 1
        return
    if rc == "EPERM":
        report["refused"] += 1
        t = intended(sock, peer)
        if any(o is not sock and o.tuple == t for o in live):
            return
        # The documented exception: a fresh claim no connected socket backs (its socket
        # disconnected, or its connect failed), and a socket born before it.
        if any(o is not sock and o.claim and o.claim[0] == t and o.tuple != t
               and before_t - o.claim[2] <= FRESH_NS + SLACK_NS
               and sock.born <= o.claim[2] for o in live):
            report["tolerated"] += 1
            return
        near = [o.id for o in everyone.values() if any(
            isinstance(h[-1], tuple) and h[-1] == t for h in o.history)]
        report["false_rejections"].append({**what, "tuple": t,
                                           "live": [(o.id, o.tuple) for o in live],
                                           "recent": list(recent),
                                           "histories": {i: everyone[i].history
                                                         for i in [sock.id] + near}})
        return
    report["errors"][rc] = report["errors"].get(rc, 0) + 1
    # The kernel failed it after the hook: its claim dangles, and the socket keeps whatever
    # tuple it had.
    if checked and sock.bound:
        sock.claim = (intended(sock, peer), before_t, after_t)
    sock.tuple = sock.held()


def peers_for(sock):
    if sock.family == 4:
        return PEERS4
    return PEERS6 if sock.v6only else PEERS6 + PEERSM


def step():
    op = rng.choices(["new", "bind", "connect", "close", "disconnect", "pause"],
                     [20, 15, 40, 12, 13, 2])[0]
    if op == "pause":
        # Long enough for every claim made so far to go stale.
        time.sleep(0.012)
        return
    if op == "new" or not live:
        if len(live) < MAX_SOCKETS:
            live.append(Sock())
        return
    sock = rng.choice(live)
    if op == "bind":
        if sock.bound is None:
            choices = LOCAL4 if sock.family == 4 else LOCAL6 + ([] if sock.v6only else MAPPED)
            addr = (rng.choice(choices), rng.choice(PORTS))
            try:
                sock.s.bind(addr)
                sock.bound = addr
                sock.history.append((report["ops"], "bind", addr))
            except OSError as e:
                report["errors"]["bind " + errno.errorcode[e.errno]] = 1
    elif op == "connect":
        if sock.bound is None and rng.random() < 0.8:
            return  # mostly bound sockets: auto-bound ones are only counted
        connect(sock, rng.choice(peers_for(sock)))
        if sock.bound is None:
            local = sock.s.getsockname()
            sock.bound = (local[0], local[1])
    elif op == "close":
        sock.history.append((report["ops"], "close"))
        sock.s.close()
        live.remove(sock)
    elif op == "disconnect":
        if sock.tuple is not None:
            addr = struct.pack("=H", socket.AF_UNSPEC) + bytes(14)
            buf = ctypes.create_string_buffer(addr, len(addr))
            LIBC.connect(sock.s.fileno(), buf, len(addr))
            sock.history.append((report["ops"], "disconnect", sock.held()))
            # Its claim of the tuple dangles (no hook runs for this): fresh for 10 ms.
            sock.tuple = None
            try:
                sock.bound = (sock.s.getsockname()[0], sock.s.getsockname()[1])
            except OSError:
                pass


STOP = int(os.environ.get("MODEL_STOP", "-1"))
for i in range(OPS):
    report["ops"] = i
    if i == STOP:
        cookies = {o.id: [int.from_bytes(o.s.getsockopt(socket.SOL_SOCKET, 57, 8), "little"),
                          o.tuple, o.bound, o.history[-3:]] for o in live}
        print(json.dumps({"stopped": i, "netns": int.from_bytes(
            socket.socket().getsockopt(socket.SOL_SOCKET, 71, 8), "little"),
            "cookies": cookies}), flush=True)
        time.sleep(3600)
    step()
report["ops"] = OPS
print(json.dumps(report))
