"""Pod network identity for the node agent: a loopback address per pod, a kubelet-style hosts file.

There is no CNI and no cluster DNS here. Every pod gets its own address in 127.77.0.0/16 (on Linux
all of 127.0.0.0/8 is local on `lo`, so a process can bind it without any set-up) and its own hosts
file, bind-mounted over /etc/hosts. The file holds what the kubelet writes (localhost lines and the
pod's own `<ip> <hostname>.<subdomain>.<ns>.svc.cluster.local <hostname>` entry) plus what cluster
DNS would answer for the pod's subdomain: the A records of the ready peers behind the headless
Service of that name. So `<job>-0.<svc>` resolves the way it does on a real cluster, and no code
needs a test-only path.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from ipaddress import IPv4Network

# The range pods get addresses from; any 127/8 range is local on lo.
POD_NETWORK = IPv4Network("127.77.0.0/16")
CLUSTER_DOMAIN = "cluster.local"

# The fixed head of every hosts file, the same lines kubelet's managedHostsHeader + defaults write.
_HOSTS_HEADER = """# Kubernetes-managed hosts file (wanops node agent).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


class AddressPool:
    """Hands out pod addresses, never two live pods the same one.

    The scan starts at a random offset so two agents on one machine (two test sessions) are
    unlikely to hand out the same address at the same time; an address comes back when its pod is
    gone.
    """

    def __init__(self, network: IPv4Network = POD_NETWORK) -> None:
        # Skip .0 and .255 in the last octet: legal on lo, but confusing to read.
        self._hosts = [a for a in network.hosts() if a.packed[3] not in (0, 255)]
        self._next = random.randrange(len(self._hosts))
        self._used: dict[str, str] = {}  # address -> pod uid
        self._lock = threading.Lock()

    def allocate(self, uid: str) -> str:
        with self._lock:
            for _ in range(len(self._hosts)):
                address = str(self._hosts[self._next])
                self._next = (self._next + 1) % len(self._hosts)
                if address not in self._used:
                    self._used[address] = uid
                    return address
        raise RuntimeError(f"no free pod address left in {POD_NETWORK}")

    def release(self, uid: str) -> None:
        with self._lock:
            for address in [a for a, owner in self._used.items() if owner == uid]:
                del self._used[address]


@dataclass(frozen=True)
class HostEntry:
    """One pod's name record: what `<hostname>.<subdomain>` resolves to."""

    ip: str
    hostname: str
    subdomain: str
    namespace: str

    def line(self) -> str:
        if not self.subdomain:
            return f"{self.ip}\t{self.hostname}\n"
        fqdn = f"{self.hostname}.{self.subdomain}.{self.namespace}.svc.{CLUSTER_DOMAIN}"
        return f"{self.ip}\t{fqdn}\t{self.hostname}.{self.subdomain}\t{self.hostname}\n"


def render_hosts(own: HostEntry, peers: list[HostEntry]) -> str:
    """The pod's own entry first (as the kubelet writes it), then its subdomain peers by name."""
    lines = [_HOSTS_HEADER, own.line()]
    lines += [p.line() for p in sorted(peers, key=lambda p: p.hostname) if p != own]
    return "".join(lines)


def write_in_place(path: str, content: str) -> bool:
    """Rewrites a bind-mounted file without replacing its inode (a rename would not be seen inside
    the
    pod's mount namespace). Returns whether the content changed."""
    data = content.encode()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True
