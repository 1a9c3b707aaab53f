#!/usr/bin/env python3
"""Mint ES256 JWTs for the gateway benchmark with nothing but the standard library + openssl.

usage: mint_tokens.py PRIVATE_KEY_PEM PUBLIC_KEY_PEM OUT_DIR COUNT ISSUER AUDIENCE KID

Writes OUT_DIR/jwks.json (the public key as a JWKS, alg ES256, kid KID) and OUT_DIR/tokens.txt
(COUNT tokens, one per line, sub = user-0000 ... , valid for 30 minutes).
ECDSA signatures come from `openssl dgst -sha256 -sign` (DER) and are converted to the JOSE
raw r||s form here.
"""
import base64
import json
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_read(buf: bytes, pos: int):
    """Read one DER TLV at pos; return (tag, value, next_pos)."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    return tag, buf[pos:pos + length], pos + length


def ec_point_from_spki(pub_der: bytes) -> tuple[bytes, bytes]:
    # SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier, BIT STRING }
    _, spki, _ = der_read(pub_der, 0)
    _, _, pos = der_read(spki, 0)              # AlgorithmIdentifier
    tag, bits, _ = der_read(spki, pos)         # BIT STRING: 0x00 unused-bits, 0x04 || X || Y
    assert tag == 0x03 and bits[0] == 0 and bits[1] == 0x04 and len(bits) == 66, "not a P-256 key"
    return bits[2:34], bits[34:66]


def der_sig_to_raw(sig: bytes) -> bytes:
    _, seq, _ = der_read(sig, 0)
    _, r, pos = der_read(seq, 0)
    _, s, _ = der_read(seq, pos)
    return int.from_bytes(r, "big").to_bytes(32, "big") + int.from_bytes(s, "big").to_bytes(32, "big")


def main() -> None:
    priv, pub, out, count, iss, aud, kid = sys.argv[1:8]
    count = int(count)
    pub_der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", pub, "-outform", "DER"],
        check=True, capture_output=True).stdout
    x, y = ec_point_from_spki(pub_der)
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                      "x": b64url(x), "y": b64url(y)}]}
    with open(f"{out}/jwks.json", "w") as f:
        json.dump(jwks, f)

    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": kid},
                               separators=(",", ":")).encode())
    now = int(time.time())
    tokens = []
    for n in range(count):
        claims = {"iss": iss, "aud": aud, "sub": f"user-{n:04d}", "iat": now, "nbf": now - 5,
                  "exp": now + 1800, "scope": "bench"}
        signing_input = header + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", priv],
                             input=signing_input.encode(), check=True, capture_output=True).stdout
        tokens.append(signing_input + "." + b64url(der_sig_to_raw(der)))
    with open(f"{out}/tokens.txt", "w") as f:
        f.write("\n".join(tokens) + "\n")


if __name__ == "__main__":
    main()
