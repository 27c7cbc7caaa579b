//! The natives behind `crypto.subtle`'s asymmetric keys (see `prelude.js`): RSASSA-PKCS1-v1_5
//! and RSA-PSS, ECDSA on P-256 and P-384 (RustCrypto, pure Rust). Keys cross to JavaScript as
//! DER — SPKI for public keys, PKCS #8 for private ones — and are parsed again by each
//! operation. Signatures are in Web Crypto's forms (ECDSA: `r || s`, not DER).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use javy_plugin_api::javy::quickjs::{self, Array, ArrayBuffer, Ctx, Exception};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use serde_json::{Value as Json, json};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Draws from the call's randomness (the host's CSPRNG in actions; the call's seeded
/// generator in queries and mutations, which stay deterministic).
struct CallRng;

impl rand_core::RngCore for CallRng {
    fn next_u32(&mut self) -> u32 {
        (crate::next_random() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        crate::next_random()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = crate::next_random().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for CallRng {}

fn bytes<'a>(buffer: &'a ArrayBuffer<'_>) -> &'a [u8] {
    buffer.as_bytes().unwrap_or_default()
}

/// A failure thrown as a `TypeError` with `message` (the prelude rethrows it as Web Crypto's
/// `DataError` or `OperationError`).
fn fail(ctx: &Ctx<'_>, message: impl std::fmt::Display) -> quickjs::Error {
    Exception::throw_type(ctx, &message.to_string())
}

/// The digest of `data` with `hash` (`SHA-1`, `SHA-256`, ...).
fn digest(ctx: &Ctx<'_>, hash: &str, data: &[u8]) -> quickjs::Result<Vec<u8>> {
    Ok(match hash {
        "SHA-1" => Sha1::digest(data).to_vec(),
        "SHA-256" => Sha256::digest(data).to_vec(),
        "SHA-384" => Sha384::digest(data).to_vec(),
        "SHA-512" => Sha512::digest(data).to_vec(),
        other => return Err(fail(ctx, format!("unsupported hash {other:?}"))),
    })
}

/// Runs `$body` with `$d` the digest type named by `$hash`.
macro_rules! with_hash {
    ($ctx:expr, $hash:expr, $d:ident => $body:expr) => {
        match $hash {
            "SHA-1" => {
                type $d = Sha1;
                $body
            }
            "SHA-256" => {
                type $d = Sha256;
                $body
            }
            "SHA-384" => {
                type $d = Sha384;
                $body
            }
            "SHA-512" => {
                type $d = Sha512;
                $body
            }
            other => return Err(fail($ctx, format!("unsupported hash {other:?}"))),
        }
    };
}

/// An imported key: whether private, its DER, and its size in bits (RSA modulus; curve order).
struct Imported {
    private: bool,
    der: Vec<u8>,
    bits: usize,
}

fn big(ctx: &Ctx<'_>, jwk: &Json, field: &str) -> quickjs::Result<Option<BigUint>> {
    match jwk.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => B64URL
            .decode(s.trim_end_matches('='))
            .map(|b| Some(BigUint::from_bytes_be(&b)))
            .map_err(|_| fail(ctx, format!("the JWK's {field} is not base64url"))),
        Some(_) => Err(fail(ctx, format!("the JWK's {field} is not a string"))),
    }
}

fn import_rsa(ctx: &Ctx<'_>, format: &str, data: &[u8], jwk: Option<&str>) -> quickjs::Result<Imported> {
    let bad = |e: &dyn std::fmt::Display| fail(ctx, format!("not an RSA key: {e}"));
    let (private, der, bits) = match format {
        "spki" => {
            let key = RsaPublicKey::from_public_key_der(data).map_err(|e| bad(&e))?;
            (false, key.to_public_key_der().map_err(|e| bad(&e))?.into_vec(), key.n().bits())
        }
        "pkcs8" => {
            let key = RsaPrivateKey::from_pkcs8_der(data).map_err(|e| bad(&e))?;
            (true, key.to_pkcs8_der().map_err(|e| bad(&e))?.as_bytes().to_vec(), key.n().bits())
        }
        "jwk" => {
            let jwk: Json = serde_json::from_str(jwk.unwrap_or("null")).map_err(|e| bad(&e))?;
            if jwk.get("kty").and_then(Json::as_str) != Some("RSA") {
                return Err(fail(ctx, "an RSA JWK needs kty \"RSA\""));
            }
            let n = big(ctx, &jwk, "n")?.ok_or_else(|| fail(ctx, "the JWK has no n"))?;
            let e = big(ctx, &jwk, "e")?.ok_or_else(|| fail(ctx, "the JWK has no e"))?;
            let bits = n.bits();
            match big(ctx, &jwk, "d")? {
                Some(d) => {
                    let primes: Vec<BigUint> =
                        [big(ctx, &jwk, "p")?, big(ctx, &jwk, "q")?].into_iter().flatten().collect();
                    let key = RsaPrivateKey::from_components(n, e, d, primes).map_err(|e| bad(&e))?;
                    (true, key.to_pkcs8_der().map_err(|e| bad(&e))?.as_bytes().to_vec(), bits)
                }
                None => {
                    let key = RsaPublicKey::new(n, e).map_err(|e| bad(&e))?;
                    (false, key.to_public_key_der().map_err(|e| bad(&e))?.into_vec(), bits)
                }
            }
        }
        other => return Err(fail(ctx, format!("RSA keys do not come in format {other}"))),
    };
    Ok(Imported { private, der, bits })
}

/// The curve-generic parts, instantiated for P-256 and P-384.
macro_rules! curve {
    ($module:ident, $curve:ident, $bits:expr) => {
        mod $module {
            use super::*;
            use $curve::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
            use $curve::ecdsa::{Signature, SigningKey, VerifyingKey};
            use $curve::{PublicKey, SecretKey};

            pub(super) fn import(
                ctx: &Ctx<'_>,
                format: &str,
                data: &[u8],
                jwk: Option<&str>,
            ) -> quickjs::Result<Imported> {
                let bad = |e: &dyn std::fmt::Display| fail(ctx, format!("not a key of this curve: {e}"));
                let public = |key: PublicKey| -> quickjs::Result<Imported> {
                    let der = key.to_public_key_der().map_err(|e| bad(&e))?.into_vec();
                    Ok(Imported { private: false, der, bits: $bits })
                };
                let private = |key: SecretKey| -> quickjs::Result<Imported> {
                    let der = key.to_pkcs8_der().map_err(|e| bad(&e))?.as_bytes().to_vec();
                    Ok(Imported { private: true, der, bits: $bits })
                };
                match format {
                    "raw" => public(PublicKey::from_sec1_bytes(data).map_err(|e| bad(&e))?),
                    "spki" => public(PublicKey::from_public_key_der(data).map_err(|e| bad(&e))?),
                    "pkcs8" => private(SecretKey::from_pkcs8_der(data).map_err(|e| bad(&e))?),
                    "jwk" => {
                        let text = jwk.unwrap_or("null");
                        let parsed: Json = serde_json::from_str(text).map_err(|e| bad(&e))?;
                        if parsed.get("d").is_some() {
                            private(SecretKey::from_jwk_str(text).map_err(|e| bad(&e))?)
                        } else {
                            public(PublicKey::from_jwk_str(text).map_err(|e| bad(&e))?)
                        }
                    }
                    other => Err(fail(ctx, format!("EC keys do not come in format {other}"))),
                }
            }

            pub(super) fn sign(ctx: &Ctx<'_>, der: &[u8], prehash: &[u8]) -> quickjs::Result<Vec<u8>> {
                let key = SecretKey::from_pkcs8_der(der).map_err(|e| fail(ctx, e))?;
                let signature: Signature = SigningKey::from(key).sign_prehash(prehash).map_err(|e| fail(ctx, e))?;
                Ok(signature.to_bytes().to_vec())
            }

            pub(super) fn verify(ctx: &Ctx<'_>, der: &[u8], prehash: &[u8], signature: &[u8]) -> quickjs::Result<bool> {
                let key = PublicKey::from_public_key_der(der).map_err(|e| fail(ctx, e))?;
                let Ok(signature) = Signature::from_slice(signature) else { return Ok(false) };
                Ok(VerifyingKey::from(key).verify_prehash(prehash, &signature).is_ok())
            }

            pub(super) fn export(ctx: &Ctx<'_>, format: &str, der: &[u8], private: bool) -> quickjs::Result<Vec<u8>> {
                let bad = |e: &dyn std::fmt::Display| fail(ctx, e);
                if private {
                    let key = SecretKey::from_pkcs8_der(der).map_err(|e| bad(&e))?;
                    return match format {
                        "jwk" => Ok(key.to_jwk_string().as_bytes().to_vec()),
                        other => Err(fail(ctx, format!("a private EC key does not export as {other}"))),
                    };
                }
                let key = PublicKey::from_public_key_der(der).map_err(|e| bad(&e))?;
                match format {
                    "raw" => Ok(key.to_sec1_bytes().to_vec()),
                    "jwk" => Ok(key.to_jwk_string().into_bytes()),
                    other => Err(fail(ctx, format!("a public EC key does not export as {other}"))),
                }
            }

            /// A new key pair: [PKCS #8 of the private key, SPKI of the public one].
            pub(super) fn generate(ctx: &Ctx<'_>) -> quickjs::Result<(Vec<u8>, Vec<u8>)> {
                let key = SecretKey::random(&mut CallRng);
                let private = key.to_pkcs8_der().map_err(|e| fail(ctx, e))?.as_bytes().to_vec();
                let public = key.public_key().to_public_key_der().map_err(|e| fail(ctx, e))?.into_vec();
                Ok((private, public))
            }
        }
    };
}

curve!(ec256, p256, 256);
curve!(ec384, p384, 384);

/// `asymImport(kind, format, data, jwk)`: `[isPrivate, der, bits]` of a key of `kind` (`RSA`,
/// `P-256`, `P-384`) given in `format` (`spki`, `pkcs8`, `jwk` as JSON text, `raw` for EC
/// public keys).
pub fn import<'js>(
    ctx: Ctx<'js>,
    kind: String,
    format: String,
    data: Option<ArrayBuffer<'js>>,
    jwk: Option<String>,
) -> quickjs::Result<Array<'js>> {
    let data = data.as_ref().map(bytes).unwrap_or_default();
    let imported = match kind.as_str() {
        "RSA" => import_rsa(&ctx, &format, data, jwk.as_deref())?,
        "P-256" => ec256::import(&ctx, &format, data, jwk.as_deref())?,
        "P-384" => ec384::import(&ctx, &format, data, jwk.as_deref())?,
        other => return Err(fail(&ctx, format!("unsupported key kind {other:?}"))),
    };
    let out = Array::new(ctx.clone())?;
    out.set(0, imported.private)?;
    out.set(1, ArrayBuffer::new(ctx.clone(), imported.der)?)?;
    out.set(2, imported.bits as f64)?;
    Ok(out)
}

/// `asymSign(scheme, hash, der, data, saltLength)`: a signature with the private key `der`;
/// `scheme` is `RSASSA-PKCS1-v1_5`, `RSA-PSS`, `P-256` or `P-384` (ECDSA).
pub fn sign<'js>(
    ctx: Ctx<'js>,
    scheme: String,
    hash: String,
    der: ArrayBuffer<'js>,
    data: ArrayBuffer<'js>,
    salt: Option<f64>,
) -> quickjs::Result<ArrayBuffer<'js>> {
    let (der, prehash) = (bytes(&der), digest(&ctx, &hash, bytes(&data))?);
    let signature = match scheme.as_str() {
        "P-256" => ec256::sign(&ctx, der, &prehash)?,
        "P-384" => ec384::sign(&ctx, der, &prehash)?,
        "RSASSA-PKCS1-v1_5" | "RSA-PSS" => {
            let key = RsaPrivateKey::from_pkcs8_der(der).map_err(|e| fail(&ctx, e))?;
            let signed = with_hash!(&ctx, hash.as_str(), D => if scheme == "RSA-PSS" {
                let salt = salt.unwrap_or(<D as Digest>::output_size() as f64) as usize;
                key.sign_with_rng(&mut CallRng, Pss::new_with_salt::<D>(salt), &prehash)
            } else {
                key.sign(Pkcs1v15Sign::new::<D>(), &prehash)
            });
            signed.map_err(|e| fail(&ctx, e))?
        }
        other => return Err(fail(&ctx, format!("unsupported signature scheme {other:?}"))),
    };
    ArrayBuffer::new(ctx, signature)
}

/// `asymVerify(scheme, hash, der, signature, data, saltLength)`: whether `signature` of `data`
/// verifies with the public key `der`.
pub fn verify<'js>(
    ctx: Ctx<'js>,
    scheme: String,
    hash: String,
    der: ArrayBuffer<'js>,
    signature: ArrayBuffer<'js>,
    data: ArrayBuffer<'js>,
    salt: Option<f64>,
) -> quickjs::Result<bool> {
    let (der, signature, prehash) = (bytes(&der), bytes(&signature), digest(&ctx, &hash, bytes(&data))?);
    match scheme.as_str() {
        "P-256" => ec256::verify(&ctx, der, &prehash, signature),
        "P-384" => ec384::verify(&ctx, der, &prehash, signature),
        "RSASSA-PKCS1-v1_5" | "RSA-PSS" => {
            let key = RsaPublicKey::from_public_key_der(der).map_err(|e| fail(&ctx, e))?;
            let verified = with_hash!(&ctx, hash.as_str(), D => if scheme == "RSA-PSS" {
                let salt = salt.unwrap_or(<D as Digest>::output_size() as f64) as usize;
                key.verify(Pss::new_with_salt::<D>(salt), &prehash, signature)
            } else {
                key.verify(Pkcs1v15Sign::new::<D>(), &prehash, signature)
            });
            Ok(verified.is_ok())
        }
        other => Err(fail(&ctx, format!("unsupported signature scheme {other:?}"))),
    }
}

/// `asymExport(kind, format, der, isPrivate)`: the key in `format` (`jwk` as JSON text bytes).
pub fn export<'js>(
    ctx: Ctx<'js>,
    kind: String,
    format: String,
    der: ArrayBuffer<'js>,
    private: bool,
) -> quickjs::Result<ArrayBuffer<'js>> {
    let der = bytes(&der);
    let out = match (kind.as_str(), format.as_str()) {
        (_, "spki") if !private => der.to_vec(),
        (_, "pkcs8") if private => der.to_vec(),
        ("P-256", format) => ec256::export(&ctx, format, der, private)?,
        ("P-384", format) => ec384::export(&ctx, format, der, private)?,
        ("RSA", "jwk") => {
            let b = |n: &BigUint| B64URL.encode(n.to_bytes_be());
            let jwk = if private {
                let key = RsaPrivateKey::from_pkcs8_der(der).map_err(|e| fail(&ctx, e))?;
                let mut jwk = json!({ "kty": "RSA", "n": b(key.n()), "e": b(key.e()), "d": b(key.d()) });
                if let [p, q] = key.primes() {
                    jwk["p"] = b(p).into();
                    jwk["q"] = b(q).into();
                }
                jwk
            } else {
                let key = RsaPublicKey::from_public_key_der(der).map_err(|e| fail(&ctx, e))?;
                json!({ "kty": "RSA", "n": b(key.n()), "e": b(key.e()) })
            };
            jwk.to_string().into_bytes()
        }
        (kind, format) => {
            let which = if private { "private" } else { "public" };
            return Err(fail(&ctx, format!("a {which} {kind} key does not export as {format}")));
        }
    };
    ArrayBuffer::new(ctx, out)
}

/// `asymGenerate(curve)`: `[pkcs8, spki]` of a new ECDSA key pair.
pub fn generate<'js>(ctx: Ctx<'js>, curve: String) -> quickjs::Result<Array<'js>> {
    let (private, public) = match curve.as_str() {
        "P-256" => ec256::generate(&ctx)?,
        "P-384" => ec384::generate(&ctx)?,
        other => return Err(fail(&ctx, format!("unsupported curve {other:?}"))),
    };
    let out = Array::new(ctx.clone())?;
    out.set(0, ArrayBuffer::new(ctx.clone(), private)?)?;
    out.set(1, ArrayBuffer::new(ctx.clone(), public)?)?;
    Ok(out)
}
