#!/usr/bin/env python3
"""Writes the test certificates of config/testdata/tls (run once; the files are committed).

Needs the `cryptography` package. Everything is valid from 2025 to 2125 except `expired.pem`.
"""
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

here = pathlib.Path(__file__).parent
start = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
end = datetime.datetime(2125, 1, 1, tzinfo=datetime.timezone.utc)


def name(cn, org="Tern Test"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(subject, key, issuer, issuer_key, sans=(), ca=False, not_before=start, not_after=end):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    algo = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(issuer_key, algo)


def pem(c):
    return c.public_bytes(serialization.Encoding.PEM)


def key_pem(k, fmt=serialization.PrivateFormat.PKCS8):
    return k.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def write(n, data):
    (here / n).write_bytes(data)


ca_key = ec.generate_private_key(ec.SECP256R1())
ca = cert(name("Tern Test CA"), ca_key, name("Tern Test CA"), ca_key, ca=True)
write("ca.pem", pem(ca))

ec_key = ec.generate_private_key(ec.SECP256R1())
sans = [x509.DNSName("api.example.com"), x509.DNSName("*.example.com"),
        x509.UniformResourceIdentifier("spiffe://example.com/api"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
leaf = cert(name("api.example.com"), ec_key, ca.subject, ca_key, sans)
write("ec.pem", pem(leaf))
write("ec.key", key_pem(ec_key))
write("ec-sec1.key", key_pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL))
write("ec-chain.pem", pem(leaf) + pem(ca))
write("ec-chain-reversed.pem", pem(ca) + pem(leaf))

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
write("rsa.pem", pem(cert(name("rsa.example.com"), rsa_key, ca.subject, ca_key, [x509.DNSName("rsa.example.com")])))
write("rsa.key", key_pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL))
write("rsa-pkcs8.key", key_pem(rsa_key))

ed_key = ed25519.Ed25519PrivateKey.generate()
write("ed25519.pem", pem(cert(name("ed.example.com"), ed_key, ca.subject, ca_key, [x509.DNSName("ed.example.com")])))
write("ed25519.key", key_pem(ed_key))

write("other.key", key_pem(ec.generate_private_key(ec.SECP256R1())))

old_key = ec.generate_private_key(ec.SECP256R1())
write("expired.pem", pem(cert(name("old.example.com"), old_key, ca.subject, ca_key, [x509.DNSName("old.example.com")],
                              not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
                              not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc))))
write("expired.key", key_pem(old_key))

# Keys ring cannot sign with (the proxy could not serve them): a P-521 and a 1024-bit RSA key.
p521_key = ec.generate_private_key(ec.SECP521R1())
write("p521.pem", pem(cert(name("p521.example.com"), p521_key, name("p521.example.com"), p521_key)))
write("p521.key", key_pem(p521_key))
rsa1024_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
write("rsa1024.pem", pem(cert(name("rsa1024.example.com"), rsa1024_key, name("rsa1024.example.com"), rsa1024_key)))
write("rsa1024.key", key_pem(rsa1024_key))
