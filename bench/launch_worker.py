#!/usr/bin/env python3
"""Runs one graygate worker without its master, for tools that cannot follow the master's
`/proc/self/exe` re-execution (valgrind): binds ADDR, hands it and the config file over the
way the master does (GRAYGATE_LISTEN_FDS, GRAYGATE_CONF_FD) and executes CMD.

    launch_worker.py ADDR CONFIG CMD...
"""
import os
import socket
import sys
import tempfile

addr, config, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
host, port = addr.rsplit(":", 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen(4096)
# Non-blocking, as the master hands its sockets over (tokio requires it).
s.setblocking(False)
s.set_inheritable(True)
# The hand-over format of src/lifecycle/source.rs: a header line, then the file's text.
h = tempfile.TemporaryFile()
h.write(("file %s\n" % os.path.abspath(config)).encode() + open(config, "rb").read())
h.flush()
os.set_inheritable(h.fileno(), True)
os.environ["GRAYGATE_LISTEN_FDS"] = "%s=%d" % (addr, s.fileno())
os.environ["GRAYGATE_CONF_FD"] = str(h.fileno())
os.execvp(cmd[0], cmd)
