"""Throw-away PKI for one local cluster: a CA, the API server's serving cert, client certs, SA keys.

A real API server only talks TLS and authenticates clients by certificate, so every start writes a
fresh set (ECDSA P-256 is fast to generate; 7-day validity outlives any test session). One CA signs
both the serving and the client certificates: nothing here needs them separated.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=7)
#: The first address of --service-cluster-ip-range; in-cluster clients reach "kubernetes" there.
SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class ClientCert:
    """Paths of one client identity's certificate and key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Everything the control plane components are started with."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_public: Path
    sa_private: Path
    clients: dict[str, ClientCert]


#: Client identities: file stem -> (CN, organisations). The CNs of the controller manager and the
#: scheduler are the users that Kubernetes' bootstrap RBAC already binds to their roles.
CLIENTS: dict[str, tuple[str, list[str]]] = {
    "admin": ("wanops-admin", ["system:masters"]),
    "kube-controller-manager": ("system:kube-controller-manager", []),
    "kube-scheduler": ("system:kube-scheduler", []),
    # The API server's identity towards aggregated API servers; publishing a request-header CA also
    # stops KCM and the scheduler from logging "missing content for CA bundle" every few seconds.
    "front-proxy-client": ("front-proxy-client", []),
}


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, orgs: list[str] | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs or []]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=not is_ca, key_cert_sign=is_ca, crl_sign=is_ca,
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def generate(pki_dir: Path) -> Pki:
    """Write a complete PKI into ``pki_dir`` (overwriting an older one) and return its paths."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("wanops-localcluster-ca")
    ca_cert = _sign(ca_name, ca_key.public_key(), ca_name, ca_key, is_ca=True)
    _write_key(pki_dir / "ca.key", ca_key)
    _write_cert(pki_dir / "ca.crt", ca_cert)

    serving_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                  "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
    ] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    serving = _sign(_name("kube-apiserver"), serving_key.public_key(), ca_name, ca_key,
                    usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans)
    _write_key(pki_dir / "apiserver.key", serving_key)
    _write_cert(pki_dir / "apiserver.crt", serving)

    clients = {}
    for stem, (cn, orgs) in CLIENTS.items():
        key = _key()
        cert = _sign(_name(cn, orgs), key.public_key(), ca_name, ca_key,
                     usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
        clients[stem] = ClientCert(pki_dir / f"{stem}.crt", pki_dir / f"{stem}.key")
        _write_key(clients[stem].key, key)
        _write_cert(clients[stem].cert, cert)

    sa_key = _key()  # signs ServiceAccount tokens (ES256)
    _write_key(pki_dir / "sa.key", sa_key)
    (pki_dir / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    return Pki(pki_dir / "ca.crt", pki_dir / "ca.key", pki_dir / "apiserver.crt",
               pki_dir / "apiserver.key", pki_dir / "sa.pub", pki_dir / "sa.key", clients)


def kubeconfig(server: str, ca_cert: Path, client: ClientCert, user: str) -> str:
    """A self-contained kubeconfig (certificates embedded), so it works from any directory."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return f"""apiVersion: v1
kind: Config
clusters:
- name: wanops-local
  cluster:
    server: {server}
    certificate-authority-data: {b64(ca_cert)}
users:
- name: {user}
  user:
    client-certificate-data: {b64(client.cert)}
    client-key-data: {b64(client.key)}
contexts:
- name: wanops-local
  context:
    cluster: wanops-local
    user: {user}
    namespace: default
current-context: wanops-local
"""
