//! The natives behind `crypto.subtle` (see `prelude.js`): digests and HMAC, deterministic, so
//! queries and mutations may use them too.

use hmac::{Hmac, Mac};
use javy_plugin_api::javy::quickjs::{self, ArrayBuffer, Ctx, Exception};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

fn bytes<'a>(buffer: &'a ArrayBuffer<'_>) -> &'a [u8] {
    // A detached buffer reads as empty.
    buffer.as_bytes().unwrap_or_default()
}

fn unsupported(ctx: &Ctx<'_>, algorithm: &str) -> quickjs::Error {
    Exception::throw_type(ctx, &format!("unsupported hash {algorithm:?}"))
}

/// `digest(algorithm, data)`: the SHA-1/256/384/512 digest (names as the prelude normalized them).
pub fn digest<'js>(ctx: Ctx<'js>, algorithm: String, data: ArrayBuffer<'js>) -> quickjs::Result<ArrayBuffer<'js>> {
    let data = bytes(&data);
    let out = match algorithm.as_str() {
        "SHA-1" => Sha1::digest(data).to_vec(),
        "SHA-256" => Sha256::digest(data).to_vec(),
        "SHA-384" => Sha384::digest(data).to_vec(),
        "SHA-512" => Sha512::digest(data).to_vec(),
        other => return Err(unsupported(&ctx, other)),
    };
    ArrayBuffer::new(ctx, out)
}

/// `hmac(hash, key, data)`: the HMAC of `data` with `key` over `hash`.
pub fn hmac<'js>(
    ctx: Ctx<'js>,
    hash: String,
    key: ArrayBuffer<'js>,
    data: ArrayBuffer<'js>,
) -> quickjs::Result<ArrayBuffer<'js>> {
    fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        // HMAC takes keys of any length: this does not fail.
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).ok()?;
        m.update(data);
        Some(m.finalize().into_bytes().to_vec())
    }
    let (key, data) = (bytes(&key), bytes(&data));
    let out = match hash.as_str() {
        "SHA-1" => mac::<Hmac<Sha1>>(key, data),
        "SHA-256" => mac::<Hmac<Sha256>>(key, data),
        "SHA-384" => mac::<Hmac<Sha384>>(key, data),
        "SHA-512" => mac::<Hmac<Sha512>>(key, data),
        other => return Err(unsupported(&ctx, other)),
    };
    let out = out.ok_or_else(|| Exception::throw_type(&ctx, "invalid HMAC key"))?;
    ArrayBuffer::new(ctx, out)
}
