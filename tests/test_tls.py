"""TLS and mutual TLS: a whole paid task with every connection over mTLS, with certificates the
test makes (its own CA; server certificates for IP 127.0.0.1 and DNS localhost; client
certificates), and the clients a mutual-TLS server turns away."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel
from typer.testing import CliRunner

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace.auth import channel_credentials, server_credentials, signed_channel
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from wallets.currencies import split

USD = "USD"


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(common: str = "agentmarket test CA") -> tuple[Pem, x509.Certificate,
                                                         ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)), cert, key


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common: str, *,
          server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, ca_cert, ca_key = make_ca()
    _other, other_cert, other_key = make_ca("another CA")
    return Pki(ca, issue(ca_cert, ca_key, "localhost", server=True),
               issue(ca_cert, ca_key, "an agent", server=False),
               issue(other_cert, other_key, "an impostor", server=False))


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


@pytest.fixture
def node(pki: Pki, tmp_path: Path) -> Iterator[MarketplaceNode]:
    tls = server_credentials(pki.server.cert, pki.server.key, client_ca_pem=pki.ca.cert)
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                         server_credentials=tls) as started:
        yield started


def test_a_paid_task_runs_end_to_end_over_mutual_tls(pki: Pki, node: MarketplaceNode):
    client = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
    seller = SellerAgent(
        "shouter", skills=[shout], marketplace=node.address, credentials=client,
        server_credentials=server_credentials(pki.server.cert, pki.server.key, pki.ca.cert)
    ).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address, credentials=client)
    try:
        buyer.fund("1.00", USD)
        listing = buyer.discover("shout", currency=USD)[0]
        deal = buyer.negotiate(listing, "shout", quantity=3, budget="0.01", currency=USD)
        buyer.hire(deal)
        assert [buyer.call(deal, {"text": t})["text"] for t in ("a", "b")] == ["A", "B"]
        escrow = buyer.finish(deal)
        price = deal.body.terms.unit_price_atomic
        assert (escrow.captured_atomic, escrow.fee_atomic) == (2 * price,
                                                               split(2 * price, 250)[1])
        with grpc.insecure_channel(seller.endpoint) as channel, \
                pytest.raises(grpc.RpcError) as plain:  # the seller speaks TLS only
            agent_pb2_grpc.AgentServiceStub(channel).Finish(
                agent_pb2.FinishRequest(agreement_id=deal.agreement_id), timeout=3)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        buyer.close()
        seller.stop(0)


@pytest.mark.parametrize("who", ["no-certificate", "another-ca", "plaintext"])
def test_a_client_without_a_certificate_from_the_ca_is_turned_away(pki: Pki,
                                                                    node: MarketplaceNode,
                                                                    who: str):
    key = AgentKey.generate()  # a valid agent signature does not stand in for the certificate
    credentials = {"no-certificate": channel_credentials(pki.ca.cert),
                   "another-ca": channel_credentials(pki.ca.cert, pki.stranger.cert,
                                                     pki.stranger.key),
                   "plaintext": None}[who]
    with signed_channel(node.address, key, credentials) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        registry_pb2_grpc.RegistryServiceStub(channel).Discover(
            registry_pb2.DiscoverRequest(skill="shout"), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_servers_ca_refuses_it(pki: Pki,
                                                                node: MarketplaceNode):
    other, _cert, _key = make_ca("not the server's CA")
    credentials = channel_credentials(other.cert, pki.client.cert, pki.client.key)
    with signed_channel(node.address, AgentKey.generate(), credentials) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        registry_pb2_grpc.RegistryServiceStub(channel).Discover(
            registry_pb2.DiscoverRequest(skill="shout"), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_serve_wants_a_key_with_its_certificate(tmp_path: Path):
    cert = tmp_path / "cert.pem"
    cert.write_bytes(b"-")
    result = CliRunner().invoke(app, ["serve", "--tls-cert", str(cert),
                                      "--db", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 1
    assert "--tls-cert and --tls-key go together" in result.output


def test_a_certificate_or_key_that_is_not_pem_is_named_not_a_bind_failure(tmp_path: Path):
    from marketplace.auth import server_credentials
    from wallets.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="TLS certificate is not PEM"):
        server_credentials(b"not a certificate", b"not a key")
