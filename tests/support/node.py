"""A real worker node for the test control plane: kube-scheduler, containerd + runc, a CNI bridge, kubelet and
kube-proxy, so Deployments, Services and projected ServiceAccount tokens run for real.

kube-scheduler, kubelet and kube-proxy come from ``tests/cluster/build.sh`` (the same ``k8s.io/kubernetes`` module
as the control plane); containerd 1.6, runc and the CNI plugins are Debian's packages (``ensure_packages`` installs
them). Images are never pulled: the pause image and Tokenbridge's are built from source by ``image/`` and imported with
``ctr images import``.

The network is the node's alone and nothing leaves the machine:

- pods live on the bridge ``tb0`` (``POD_CIDR``, the host is ``GATEWAY`` on it, which is also the node's IP and the
  API server's advertised address: pods reach the API server through the ``kubernetes`` Service, which kube-proxy
  translates to ``GATEWAY``);
- a guard chain drops anything a pod sends that would leave through another interface, and any host packet to a
  Service address that kube-proxy did not translate (so no such packet ever reaches the default route);
- pods get no DNS server (their ``resolv.conf`` is empty): they address Services by their IP environment variables.

The host must run the tests as root on cgroup v1 (kubelet 1.35 needs ``failCgroupV1: false`` for that) or v2.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.processes import free_port, stop_pid_files

REPO = Path(__file__).resolve().parents[2]
BRIDGE = "tb0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.0.0.0/24"
NODE_NAME = "tb-node"
GUARD = "TOKENBRIDGE-GUARD"
PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
}
CNI_BIN = "/usr/lib/cni"
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
CTR_NAMESPACE = "k8s.io"
LEFTOVER_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def built_image(script: str) -> tuple[Path, str]:
    """Run an image/ build script (cached by its inputs; progress on stderr): (OCI archive, image reference)."""
    out = subprocess.run(
        ["bash", str(REPO / "image" / script)], check=True, stdout=subprocess.PIPE, text=True, timeout=1800
    ).stdout.split()
    return next(Path(word) for word in out if word.endswith(".tar")), out[-1]


def can_run() -> str | None:
    """None when this machine can run the node, else why not."""
    if os.geteuid() != 0:
        return "the test node (kubelet, containerd) needs root"
    if not Path("/proc/sys/net/bridge").exists():
        return "the kernel has no bridge netfilter (br_netfilter)"
    return None


def ensure_packages() -> None:
    """Install Debian's containerd, runc, CNI plugins, iptables and conntrack when missing."""
    missing = sorted(
        {
            pkg
            for tool, pkg in PACKAGES.items()
            if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))
        }
    )
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def _remove_chains(table: str, chains: tuple[str, ...]) -> None:
    """Delete ``chains`` from ``table`` with every rule that jumps to them (absent ones are fine)."""
    rules = _run("iptables", "-t", table, "-S", check=False).stdout.splitlines()
    for rule in rules:
        words = rule.split()
        if (
            words[:1] == ["-A"]
            and words[1] not in chains
            and any(words[i] == "-j" and words[i + 1] in chains for i in range(len(words) - 1))
        ):
            _run("iptables", "-t", table, "-D", *words[1:], check=False)
    for chain in chains:
        _run("iptables", "-t", table, "-F", chain, check=False)
        _run("iptables", "-t", table, "-X", chain, check=False)


def _iptables_guard(action: str) -> None:
    """Add (``-A``) or remove (``-D``) the guard chain and its jumps; it is rebuilt on add."""
    hooks = ("FORWARD", "OUTPUT")
    _remove_chains("filter", (GUARD,))
    if action == "-D":
        return
    _run("iptables", "-N", GUARD)
    # The host talking to itself (the API server to the kubelet, both on GATEWAY) leaves through lo: allowed.
    _run("iptables", "-A", GUARD, "-o", "lo", "-j", "RETURN")
    # Pod traffic may only stay on the bridge (to another pod, or to the host itself: INPUT, not FORWARD).
    _run("iptables", "-A", GUARD, "-s", POD_CIDR, "!", "-o", BRIDGE, "-j", "DROP")
    # A Service address that kube-proxy did not translate must not reach the default route (nat runs before filter).
    _run("iptables", "-A", GUARD, "-d", SERVICE_CIDR, "-j", "REJECT")
    for hook in hooks:
        _run("iptables", "-I", hook, "1", "-j", GUARD)


class NodeNetwork:
    """The bridge, sysctls and guard rules; set up before the API server starts (it advertises ``GATEWAY``).

    The sysctls' values from before are kept in ``STATE`` until ``down``, so a run that died (or ``make
    cluster-up`` followed by ``make cluster-down`` in another process) still restores them. The bridge and its
    address are the machine's, not the session's: a second test session waits on ``LOCK`` until the first has
    taken them down, rather than have them removed under its node."""

    STATE = Path("/run/tokenbridge-node-network.json")
    LOCK = Path("/run/tokenbridge-node-network.lock")

    def __init__(self) -> None:
        self._lock: int | None = None

    def up(self) -> NodeNetwork:
        self._lock = os.open(self.LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another test session's node network ({self.LOCK})", flush=True)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{GATEWAY}/{ipaddress.ip_network(POD_CIDR).prefixlen}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        if not self.STATE.exists():
            self.STATE.write_text(json.dumps({key: (Path("/proc/sys") / key).read_text().strip() for key in SYSCTLS}))
        for key, value in SYSCTLS.items():
            (Path("/proc/sys") / key).write_text(value)
        _iptables_guard("-A")
        return self

    def down(self) -> None:
        _iptables_guard("-D")
        _run("ip", "link", "del", BRIDGE, check=False)
        if self.STATE.exists():
            for key, value in json.loads(self.STATE.read_text()).items():
                (Path("/proc/sys") / key).write_text(value)
            self.STATE.unlink()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None


class Node:
    """kube-scheduler, containerd, kubelet and kube-proxy for ``control_plane``; logs and state in ``workdir``."""

    def __init__(self, control_plane, workdir: Path):
        self.cp = control_plane
        self.dir = workdir.resolve()
        self.bin = control_plane.bin
        self.procs: dict = {}
        self.socket = self.dir / "containerd.sock"

    # ----- set-up -----------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        d = self.dir
        cp = self.cp
        for name, cn, org in (
            ("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            ("kube-proxy", "system:kube-proxy", None),
            ("kube-scheduler", "system:kube-scheduler", None),
        ):
            cp.write_client_kubeconfig(d / f"{name}.kubeconfig", cn, org)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = cp.issue_certificate(
            key, NODE_NAME, sans=[x509.DNSName(NODE_NAME), x509.IPAddress(ipaddress.ip_address(GATEWAY))]
        )
        (d / "kubelet-serving.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / "kubelet-serving.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (d / "cni").mkdir()
        (d / "cni" / "10-tokenbridge.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "tokenbridge",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(d / "cni-ipam"),
                            },
                        }
                    ],
                }
            )
        )
        (d / "containerd.toml").write_text(f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{self.socket}"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_image}"
  # Without CAP_SYS_RESOURCE (this sandbox drops it) no process may lower its oom_score_adj, which the kubelet
  # asks for its pods' sandboxes (-998): keep scores at or above containerd's own instead of failing runc.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni"
""")
        (d / "resolv.conf").write_text("")  # pods get no DNS server: nothing to resolve, nowhere to send it
        self.kubelet_port = free_port()
        (d / "kubelet.json").write_text(
            json.dumps(
                {
                    "kind": "KubeletConfiguration",
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "address": GATEWAY,
                    "port": self.kubelet_port,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": free_port(),
                    "tlsCertFile": str(d / "kubelet-serving.crt"),
                    "tlsPrivateKeyFile": str(d / "kubelet-serving.key"),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(cp.ca_file)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(d / "resolv.conf"),
                    "podCIDR": POD_CIDR,
                    "maxPods": 30,
                    # Imported images can never be pulled again: the kubelet must not collect them.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "podLogsDir": str(d / "pod-logs"),
                    "volumePluginDir": str(d / "volume-plugins"),
                    "serializeImagePulls": False,
                    "staticPodPath": "",
                    "shutdownGracePeriod": "0s",
                }
            )
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.dir / f"{name}.pid").write_text(str(self.procs[name].pid))

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ctr against the node's containerd, in the namespace the kubelet uses."""
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", CTR_NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def import_image(self, archive: Path, reference: str) -> None:
        """Import an OCI archive into the node's containerd (the kubelet then finds ``reference`` locally)."""
        self.ctr("images", "import", "--all-platforms", str(archive))
        if reference not in self.ctr("images", "list", "--quiet").stdout.split():
            raise RuntimeError(
                f"importing {archive} did not give {reference}: {self.ctr('images', 'list', '--quiet').stdout}"
            )

    def start(self, pause: tuple[Path, str], images: list[tuple[Path, str]] = ()) -> Node:
        """Start everything; ``pause`` and ``images`` are (OCI archive, reference) pairs to import."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.pause_image = pause[1]
        self._write_config()
        d = self.dir
        self._spawn("containerd", ["containerd", "--config", str(d / "containerd.toml"), "--log-level", "warn"])
        self._wait(lambda: self.ctr("version", check=False).returncode == 0, "containerd", 30)
        for archive, reference in (pause, *images):
            self.import_image(archive, reference)
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                "--kubeconfig",
                str(d / "kube-scheduler.kubeconfig"),
                "--authentication-kubeconfig",
                str(d / "kube-scheduler.kubeconfig"),
                "--authorization-kubeconfig",
                str(d / "kube-scheduler.kubeconfig"),
                "--leader-elect=false",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(free_port()),
            ],
        )
        self._spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                "--config",
                str(d / "kubelet.json"),
                "--kubeconfig",
                str(d / "kubelet.kubeconfig"),
                "--root-dir",
                str(d / "kubelet"),
                "--cert-dir",
                str(d / "kubelet-pki"),
                "--hostname-override",
                NODE_NAME,
                "--node-ip",
                GATEWAY,
            ],
        )
        self._spawn(
            "kube-proxy",
            [
                str(self.bin / "kube-proxy"),
                "--kubeconfig",
                str(d / "kube-proxy.kubeconfig"),
                "--proxy-mode",
                "iptables",
                "--cluster-cidr",
                POD_CIDR,
                "--hostname-override",
                NODE_NAME,
                "--conntrack-max-per-core",
                "0",
                "--iptables-localhost-nodeports=false",
                "--metrics-bind-address",
                f"127.0.0.1:{free_port()}",
                "--healthz-bind-address",
                f"127.0.0.1:{free_port()}",
            ],
        )
        self._wait(self._ready, f"node {NODE_NAME} Ready", 180)
        return self

    def _ready(self) -> bool:
        proc = self.cp.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conditions = json.loads(proc.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.dir / f"{name}.log").read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not ready after {timeout}s; logs in {self.dir}")

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def stop(self) -> None:
        teardown(self.dir, self.bin)


NODE_PROCESSES = ("kube-proxy", "kubelet", "kube-scheduler")


def teardown(workdir: Path, bin_dir: Path) -> None:
    """Stop the node in ``workdir`` (by its pid files, so ``make cluster-down`` can too) and remove what it left in
    the kernel: its containers, mounts and iptables chains."""
    workdir = workdir.resolve()  # /proc/mounts has absolute paths; make cluster-down passes a relative one
    stop_pid_files(workdir, NODE_PROCESSES)
    socket = workdir / "containerd.sock"
    if socket.exists():
        _kill_containers(socket)
    stop_pid_files(workdir, ("containerd",))
    _run(str(bin_dir / "kube-proxy"), "--cleanup", check=False)
    for table in ("filter", "nat", "mangle"):  # the kubelet's chains and kube-proxy's hint
        _remove_chains(table, LEFTOVER_CHAINS)
    # Volumes (tmpfs for projected tokens, overlay roots, netns) stay mounted when their owners are killed.
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(workdir) + "/")
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        _run("umount", "-l", mount, check=False)


def _kill_containers(socket: Path) -> None:
    """SIGKILL every task of the node's namespace and delete it, so shims and runc containers end with the node."""

    def ctr(*args: str) -> str:
        return subprocess.run(
            ["ctr", "--address", str(socket), "--namespace", CTR_NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout

    tasks = ctr("tasks", "list", "--quiet").split()
    for task in tasks:
        ctr("tasks", "kill", "--signal", "SIGKILL", task)
    for task in tasks:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "STOPPED" not in ctr("tasks", "list").split(task, 1)[-1][:80]:
            if task not in ctr("tasks", "list", "--quiet").split():
                break
            time.sleep(0.5)
        ctr("tasks", "delete", task)
