# The seed's reproduction: two SO_REUSEADDR sockets bound to 127.0.0.1:4444 connect to the
# same peer. Prints what each connect() returned and what `ss` sees while both are open.
import errno
import socket
import subprocess


def sock():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 4444))
    return s


sockets = []
for name in ("a", "b"):
    s = sock()
    try:
        s.connect(("127.0.0.1", 1111))
        print(f"  {name}.connect(127.0.0.1:1111) -> ok")
    except OSError as e:
        print(f"  {name}.connect(127.0.0.1:1111) -> {errno.errorcode[e.errno]}: {e.strerror}")
    sockets.append(s)
print("  ss -nau dport = :1111")
ss = subprocess.run(["ss", "-nau", "dport", "=", ":1111"], capture_output=True, text=True)
print("".join("    " + line + "\n" for line in ss.stdout.splitlines()), end="")
