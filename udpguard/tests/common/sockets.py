# Helpers for the socket scenarios the integration tests run inside a sandbox
# (its own cgroup and network namespace). Each scenario prints one result per line.
import ctypes
import errno
import socket
import struct
import time

P = ("127.0.0.1", 1111)  # the usual peer
LIBC = ctypes.CDLL(None, use_errno=True)


def udp(bind=None, family=4, reuseport=False, v6only=None, device=None, reuse=True):
    """A UDP socket with SO_REUSEADDR (what makes the hazard possible; reuse=False for one
    without), optionally bound to a device (SO_BINDTODEVICE) and an address."""
    s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if device is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    if bind is not None:
        s.bind(bind)
    return s


def bind(s, addr):
    """bind(): 'ok' or the errno's name."""
    try:
        s.bind(addr)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


def conn(s, addr):
    """connect(): 'ok' or the errno's name."""
    try:
        s.connect(addr)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


def conn_sockaddr_in(s, ip, port):
    """connect() with a plain AF_INET sockaddr, whatever the socket's family."""
    addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)
    buf = ctypes.create_string_buffer(addr, len(addr))
    if LIBC.connect(s.fileno(), buf, len(addr)) == 0:
        return "ok"
    return errno.errorcode[ctypes.get_errno()]


def receiver(socks, peer, family=4):
    """Sends one datagram from `peer` to the sockets' shared local address and says which
    of `socks` (by index) received it, or 'none'."""
    local = socks[0].getsockname()
    src = udp(bind=peer, family=family)
    src.sendto(b"x", local[:2] if family == 4 else local)
    time.sleep(0.05)
    got = []
    for i, s in enumerate(socks):
        try:
            s.recv(16, socket.MSG_DONTWAIT)
            got.append(str(i))
        except BlockingIOError:
            pass
    src.close()
    return ",".join(got) or "none"


def out(*values):
    print(*values, flush=True)


def disconnect(s):
    """connect() with AF_UNSPEC: the socket drops its peer (no cgroup hook runs for this)."""
    addr = struct.pack("=H", socket.AF_UNSPEC) + bytes(14)
    buf = ctypes.create_string_buffer(addr, len(addr))
    if LIBC.connect(s.fileno(), buf, len(addr)) == 0:
        return "ok"
    return errno.errorcode[ctypes.get_errno()]
