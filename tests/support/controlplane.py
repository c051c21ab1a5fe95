"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager on loopback.

The binaries come from ``tests/cluster/build.sh`` (built from the Go modules pinned beside it, cached by version).
Everything else is generated per run in a work directory: a CA, serving and client certificates, the
ServiceAccount signing key (ECDSA P-256, so ServiceAccount tokens are ES256), and an admin kubeconfig.

Used by the ``control_plane`` pytest fixture and, as a script, by ``make cluster-up`` / ``make cluster-down``:

    python -m tests.support.controlplane up [--dir DIR] [--node]   # starts, prints the kubeconfig path, stays
                                                                   # detached; --node adds tests/support/node.py
    python -m tests.support.controlplane down [--dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.processes import free_port, stop_pid_files

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "cluster" / "build.sh"
DEFAULT_DIR = REPO / ".cache" / "cluster"
CRDS = REPO / "crds"


def build_binaries() -> Path:
    """Run build.sh (a no-op when the cached binaries exist); its progress goes to our stderr."""
    out = subprocess.run(["bash", str(BUILD)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(subject: x509.Name, key, issuer_cert=None, issuer_key=None, *, ca=False, sans=(), client=False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class ControlPlane:
    """Start/stop the three processes; helpers to talk to the API server as the admin user."""

    def __init__(self, workdir: Path, bin_dir: Path, node_ip: str | None = None):
        self.dir = workdir.resolve()  # kubeconfigs name files by absolute path
        self.bin = bin_dir
        # With a node (tests/support/node.py) the API server also listens on node_ip, the host's address on the
        # pods' bridge, and advertises it: pods reach it through the kubernetes Service.
        self.node_ip = node_ip
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        # The API server is its own ServiceAccount issuer: discovery lives at issuer + /.well-known/...
        self.issuer = self.server
        self.ca_file = self.dir / "ca.crt"
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.admin_cert = (self.dir / "admin.crt", self.dir / "admin.key")

    # ----- set-up -----------------------------------------------------------------------------------------
    def _write_pki(self) -> None:
        d = self.dir
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert(_name("tokenbridge-test-ca"), self.ca_key, ca=True)
        (d / "ca.crt").write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        (d / "ca.key").write_bytes(_pem_key(self.ca_key))
        ips = ["127.0.0.1", "10.0.0.1", *([self.node_ip] if self.node_ip else [])]
        sans = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
        ]
        self._write_key_pair("apiserver", _name("kube-apiserver"), sans=sans)
        # The API server's client certificate towards kubelets (logs, exec, port-forward).
        self._write_key_pair(
            "apiserver-kubelet-client", _name("kube-apiserver-kubelet-client", "system:masters"), client=True
        )
        sa_key = ec.generate_private_key(ec.SECP256R1())
        (d / "sa.key").write_bytes(_pem_key(sa_key))
        (d / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.write_client_kubeconfig(self.kubeconfig, "tokenbridge-admin", "system:masters")
        self.write_client_kubeconfig(d / "controller-manager.kubeconfig", "system:kube-controller-manager")

    def issue_certificate(self, key, cn: str, org: str | None = None, *, sans=(), client: bool = False):
        """A certificate for ``key`` signed by the test CA (server auth, or client auth with ``client``)."""
        return _cert(_name(cn, org), key, self.ca, self.ca_key, sans=sans, client=client)

    def _write_key_pair(
        self, stem: str, subject: x509.Name, *, sans=(), client: bool = False, where: Path | None = None
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(subject, key, self.ca, self.ca_key, sans=sans, client=client)
        crt_path, key_path = (where or self.dir) / f"{stem}.crt", (where or self.dir) / f"{stem}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return crt_path, key_path

    def write_client_kubeconfig(self, path: Path, cn: str, org: str | None = None) -> None:
        """A kubeconfig at ``path`` for user ``cn`` (group ``org``) with a fresh client certificate beside it."""
        crt, key = self._write_key_pair(path.stem, _name(cn, org), client=True, where=path.parent)
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [
                        {"name": "test", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
                    ],
                    "users": [{"name": cn, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": cn}}],
                },
                indent=2,
            )
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [str(self.bin / name), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        (self.dir / f"{name}.pid").write_text(str(self.procs[name].pid))

    def start(self) -> ControlPlane:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self._write_pki()
        d = self.dir
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        self._spawn(
            "etcd",
            [
                "--data-dir",
                str(d / "etcd"),
                "--name",
                "default",
                "--listen-client-urls",
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--log-level",
                "warn",
            ],
        )
        self._wait(lambda: self._http_ok(f"{self.etcd_url}/health"), "etcd", 30)
        self.start_apiserver()
        self._spawn(
            "kube-controller-manager",
            [
                "--kubeconfig",
                str(d / "controller-manager.kubeconfig"),
                "--service-account-private-key-file",
                str(d / "sa.key"),
                "--root-ca-file",
                str(d / "ca.crt"),
                "--cluster-signing-cert-file",
                str(d / "ca.crt"),
                "--cluster-signing-key-file",
                str(d / "ca.key"),
                "--controllers",
                "*",
                "--leader-elect=false",
                "--secure-port",
                "0",
                "--use-service-account-credentials=true",
                "--concurrent-gc-syncs",
                "5",
            ],
        )
        # The default ServiceAccount appears only when the controller-manager's controllers really run.
        self._wait(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            "kube-controller-manager",
            90,
        )
        return self

    def start_apiserver(self) -> None:
        d = self.dir
        self._spawn(
            "kube-apiserver",
            [
                "--etcd-servers",
                self.etcd_url,
                "--cert-dir",
                str(d / "apiserver-certs"),
                "--tls-cert-file",
                str(d / "apiserver.crt"),
                "--tls-private-key-file",
                str(d / "apiserver.key"),
                "--client-ca-file",
                str(d / "ca.crt"),
                "--secure-port",
                str(self.port),
                "--bind-address",
                "0.0.0.0" if self.node_ip else "127.0.0.1",
                "--advertise-address",
                self.node_ip or "127.0.0.1",
                "--authorization-mode",
                "Node,RBAC",
                "--enable-admission-plugins",
                "NodeRestriction",
                "--kubelet-client-certificate",
                str(d / "apiserver-kubelet-client.crt"),
                "--kubelet-client-key",
                str(d / "apiserver-kubelet-client.key"),
                # logs and exec reach the kubelet at the node's IP (no DNS here) and check its serving certificate
                "--kubelet-preferred-address-types",
                "InternalIP",
                "--kubelet-certificate-authority",
                str(d / "ca.crt"),
                "--service-account-issuer",
                self.issuer,
                "--service-account-key-file",
                str(d / "sa.pub"),
                "--service-account-signing-key-file",
                str(d / "sa.key"),
                "--service-account-jwks-uri",
                f"{self.issuer}/openid/v1/jwks",
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
            ],
        )
        self._wait(lambda: self._http_ok(f"{self.server}/readyz", tls=True), "kube-apiserver", 90)

    def stop_apiserver(self) -> None:
        self._terminate("kube-apiserver")

    # ----- helpers ----------------------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(*map(str, self.admin_cert))
        return ctx

    def _http_ok(self, url: str, tls: bool = False) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=self.ssl_context() if tls else None) as r:
                return r.status == 200
        except OSError:
            return False

    def get_json(self, path: str):
        """GET an API path as the admin user (e.g. the issuer's discovery document)."""
        with urllib.request.urlopen(f"{self.server}{path}", timeout=5, context=self.ssl_context()) as r:
            return json.load(r)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s; logs in {self.dir}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # A discovery cache of our own: one shared with other runs (or taken before the CRDs existed) would
        # make kubectl answer "doesn't have a resource type" for our kinds.
        proc = subprocess.run(
            [
                str(self.bin / "kubectl"),
                "--kubeconfig",
                str(self.kubeconfig),
                "--cache-dir",
                str(self.dir / "kubectl-cache"),
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def install_crds(self) -> None:
        """Apply crds/ server-side and wait until every CRD is Established (idempotent)."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        self.kubectl("wait", "--for", "condition=Established", "--timeout", "60s", "-f", str(CRDS))
        shutil.rmtree(self.dir / "kubectl-cache", ignore_errors=True)

    def _terminate(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in CONTROL_PLANE_PROCESSES:
            self._terminate(name)


CONTROL_PLANE_PROCESSES = ("kube-controller-manager", "kube-apiserver", "etcd")


def _down(workdir: Path) -> None:
    """Stop what ``up`` left running in ``workdir``: the node first, when there is one, then the control plane."""
    if (workdir / "node").exists():
        from tests.support.node import NodeNetwork, teardown

        teardown(workdir / "node", build_binaries())
        NodeNetwork().down()
    stop_pid_files(workdir, CONTROL_PLANE_PROCESSES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument(
        "--node",
        action="store_true",
        help="also start a node (root): kubelet, containerd, "
        "kube-proxy, kube-scheduler, with the images built by image/ imported",
    )
    args = parser.parse_args(argv)
    if args.action == "down":
        _down(args.dir)
        print(f"control plane in {args.dir} stopped")
        return 0
    _down(args.dir)
    network = node = None
    if args.node:
        from tests.support.node import GATEWAY, NODE_NAME, Node, NodeNetwork, built_image

        images = built_image("build-pause.sh"), built_image("build.sh")
        network = NodeNetwork().up()
    cp = ControlPlane(args.dir, build_binaries(), node_ip=GATEWAY if network else None)
    try:
        cp.start()
        cp.install_crds()
        if network:
            node = Node(cp, args.dir / "node").start(images[0], [images[1]])
    except BaseException:
        _down(args.dir)
        if network:
            network.down()
        raise
    print(
        f"control plane up: {cp.server} (ServiceAccount issuer {cp.issuer})\n"
        + (f"node {NODE_NAME} Ready, with the image {images[1][1]}\n" if node else "")
        + f"export KUBECONFIG={cp.kubeconfig}\n"
        f"kubectl: {cp.bin / 'kubectl'}\nstop with: make cluster-down"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
