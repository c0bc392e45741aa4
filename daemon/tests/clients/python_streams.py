"""Exec, attach and port-forward through the official Python client (`kubernetes` from PyPI)
against a shoal API server; prints one JSON object of what it observed. Argument: the
kubeconfig."""
import json
import socket
import ssl
import sys

import websocket
from kubernetes import client, config
from kubernetes.stream import portforward, stream

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
conf = client.Configuration.get_default_copy()
seen = {}


def exec_(command, **kw):
    return stream(core.connect_get_namespaced_pod_exec, "web", "default", command=command,
                  stderr=True, stdin=kw.pop("stdin", False), stdout=True, tty=False, **kw)


# Plain exec: the output comes back (v5.channel.k8s.io, the client's first choice).
seen["echo"] = exec_(["echo", "hi", "there"])
# The exit code from the status channel.
r = exec_(["fail", "3"], _preload_content=False)
seen["subprotocol"] = r.subprotocol
r.run_forever(timeout=30)
seen["fail_code"] = r.returncode
seen["fail_stderr"] = r.read_stderr()
# stdin (text and binary messages), ended with v5's close signal.
r = exec_(["cat"], stdin=True, _preload_content=False)
r.write_stdin("hello\n")
r.write_stdin(b"world\n")
r.close_channel(0)
r.run_forever(timeout=30)
seen["cat"] = r.read_stdout()
seen["cat_code"] = r.returncode
# The same over v4.channel.k8s.io, as the Java and JavaScript clients speak it.
v4 = {"sec-websocket-protocol": "v4.channel.k8s.io"}
r = exec_(["fail", "4"], _preload_content=False, _headers=v4)
seen["v4_subprotocol"] = r.subprotocol
r.run_forever(timeout=30)
seen["v4_fail_code"] = r.returncode
seen["v4_echo"] = exec_(["echo", "four"], _headers=v4)

# Port-forward: two ports in one request; 81 is refused by the pod.
pf = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="80,81")
s = pf.socket(80)
s.settimeout(30)
s.sendall(b"hello\n")
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
seen["forward_80"] = got.decode()
s81 = pf.socket(81)
s81.settimeout(30)
seen["forward_81"] = s81.recv(10).decode()
seen["forward_81_error"] = pf.error(81)


def raw(path, protocol):
    """A WebSocket handshake by hand: the status code it gets."""
    url = conf.host.replace("https://", "wss://") + path
    sslopt = {"ca_certs": conf.ssl_ca_cert, "certfile": conf.cert_file, "keyfile": conf.key_file}
    try:
        ws = websocket.create_connection(url, header=["sec-websocket-protocol: " + protocol], sslopt=sslopt,
                                         timeout=30)
        ws.close()
        return 101
    except websocket.WebSocketBadStatusException as e:
        return e.status_code


base = "/api/v1/namespaces/default/pods/web"
seen["bad_exec_protocol"] = raw(base + "/exec?command=echo&stdout=true", "v9.channel.k8s.io")
seen["bad_exec_bool"] = raw(base + "/exec?command=echo&stdout=maybe", "v5.channel.k8s.io")
seen["forward_without_ports"] = raw(base + "/portforward", "v4.channel.k8s.io")
seen["forward_bad_port"] = raw(base + "/portforward?ports=70000", "v4.channel.k8s.io")
print(json.dumps(seen))
