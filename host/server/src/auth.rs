//! Who is calling: anonymous, a user with a verified JWT, or an admin (by admin key).
//!
//! User tokens are verified against the deployment's auth configuration: the provider is
//! chosen by the token's `iss`, the algorithm must be one the provider allows *and* match its
//! key type (so an RSA public key can never be used as an HMAC secret), and issuer, audience
//! (`applicationID`) and expiry are checked. The identity handed to functions has Convex's
//! `UserIdentity` shape.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kiln_value::{Object, Value};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// How long fetched JWKS documents are reused.
const JWKS_TTL: Duration = Duration::from_secs(600);

/// A deployment's accepted identity providers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// The providers; a token is checked against the one whose issuer matches its `iss`.
    #[serde(default)]
    pub providers: Vec<AuthProvider>,
}

/// One identity provider (an OpenID Connect issuer or a custom JWT issuer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthProvider {
    /// The expected `iss` claim. For OpenID Connect providers given by `domain` (as in
    /// Convex's `auth.config.ts`), the issuer is the domain.
    #[serde(default)]
    pub issuer: Option<String>,
    /// An OpenID Connect domain: the issuer, and where `/.well-known/openid-configuration`
    /// names the JWKS.
    #[serde(default)]
    pub domain: Option<String>,
    /// The expected audience (`aud`); none: the audience is not checked.
    #[serde(default, rename = "applicationID")]
    pub application_id: Option<String>,
    /// Accepted algorithms (`RS256`, `ES256`, `HS256`, …); default: RS256 and ES256 for
    /// public keys, HS256 for a shared secret.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// An inline JWKS document.
    #[serde(default)]
    pub jwks: Option<Json>,
    /// Where to fetch the JWKS document.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A PEM public key (RSA or EC).
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// A shared HMAC secret.
    #[serde(default)]
    pub secret: Option<String>,
}

impl AuthProvider {
    /// A provider an app declares in its `auth.config.ts`.
    pub fn from_app(spec: kiln_runtime::AuthProviderSpec) -> AuthProvider {
        AuthProvider {
            issuer: spec.issuer,
            domain: spec.domain,
            application_id: spec.application_id,
            algorithms: spec.algorithm.into_iter().collect(),
            jwks: spec.jwks,
            jwks_url: spec.jwks_url,
            ..AuthProvider::default()
        }
    }

    fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref().or(self.domain.as_deref())
    }

    fn allowed(&self) -> Vec<Algorithm> {
        let named: Vec<Algorithm> = self.algorithms.iter().filter_map(|a| a.parse().ok()).collect();
        if !named.is_empty() {
            return named;
        }
        if self.secret.is_some() { vec![Algorithm::HS256] } else { vec![Algorithm::RS256, Algorithm::ES256] }
    }
}

/// The caller of a request or socket.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Caller {
    /// No credentials.
    #[default]
    Anonymous,
    /// A user with a verified token; the value is the `UserIdentity`.
    User(Value),
    /// An admin (may call internal functions), optionally acting as a user.
    Admin(Option<Value>),
}

impl Caller {
    /// The identity functions see.
    pub fn identity(&self) -> Option<Value> {
        match self {
            Caller::Anonymous => None,
            Caller::User(v) => Some(v.clone()),
            Caller::Admin(v) => v.clone(),
        }
    }

    /// Whether internal functions may be called.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin(_))
    }

    /// A key that distinguishes callers whose queries may share results.
    pub fn cache_key(&self) -> String {
        match self {
            Caller::Anonymous => "-".to_owned(),
            Caller::User(v) => format!("u{}", kiln_value::to_convex_json(v)),
            Caller::Admin(v) => {
                format!("a{}", v.as_ref().map(|v| kiln_value::to_convex_json(v).to_string()).unwrap_or_default())
            }
        }
    }
}

/// Verifies user tokens for one deployment, caching fetched key sets.
#[derive(Default)]
pub struct Verifier {
    jwks_cache: Mutex<HashMap<String, (Instant, JwkSet)>>,
}

fn unverified_claims(token: &str) -> Result<serde_json::Map<String, Json>, String> {
    let payload = token.split('.').nth(1).ok_or("the token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the token's payload is not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| "the token's payload is not a JSON object".to_owned())
}

fn fetch_json(url: &str) -> Result<Json, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut response = agent.get(url).call().map_err(|e| format!("fetching {url}: {e}"))?;
    let text =
        response.body_mut().with_config().limit(1 << 20).read_to_string().map_err(|e| format!("reading {url}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{url} is not JSON: {e}"))
}

impl Verifier {
    async fn key_set(&self, provider: &AuthProvider) -> Result<Option<JwkSet>, String> {
        if let Some(inline) = &provider.jwks {
            return serde_json::from_value(inline.clone()).map(Some).map_err(|e| format!("invalid inline JWKS: {e}"));
        }
        let url = match (&provider.jwks_url, &provider.domain) {
            (Some(url), _) => url.clone(),
            (None, Some(domain)) => {
                let discovery = format!("{}/.well-known/openid-configuration", domain.trim_end_matches('/'));
                let doc =
                    tokio::task::spawn_blocking(move || fetch_json(&discovery)).await.map_err(|e| e.to_string())??;
                doc.get("jwks_uri")
                    .and_then(Json::as_str)
                    .ok_or("the OpenID configuration names no jwks_uri")?
                    .to_owned()
            }
            (None, None) => return Ok(None),
        };
        if let Some((at, set)) = self.jwks_cache.lock().get(&url)
            && at.elapsed() < JWKS_TTL
        {
            return Ok(Some(set.clone()));
        }
        let fetched = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || fetch_json(&url)).await.map_err(|e| e.to_string())??
        };
        let set: JwkSet = serde_json::from_value(fetched).map_err(|e| format!("invalid JWKS at {url}: {e}"))?;
        self.jwks_cache.lock().insert(url, (Instant::now(), set.clone()));
        Ok(Some(set))
    }

    /// Verifies `token` against `config`; returns the `UserIdentity` or why it was refused.
    pub async fn verify(&self, config: &AuthConfig, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let claims = unverified_claims(token)?;
        let iss = claims.get("iss").and_then(Json::as_str).ok_or("the token has no issuer (iss)")?;
        let provider = config
            .providers
            .iter()
            .find(|p| p.issuer() == Some(iss))
            .ok_or_else(|| format!("no auth provider is configured for issuer {iss:?}"))?;
        let allowed = provider.allowed();
        if !allowed.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted for issuer {iss:?}", header.alg));
        }
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = provider.secret.as_ref().ok_or("this issuer has no shared secret")?;
                DecodingKey::from_secret(secret.as_bytes())
            }
            alg => {
                if let Some(pem) = &provider.public_key_pem {
                    let pem = pem.as_bytes();
                    match alg {
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                        _ => DecodingKey::from_rsa_pem(pem),
                    }
                    .map_err(|e| format!("invalid public key: {e}"))?
                } else {
                    let set = self.key_set(provider).await?.ok_or("this issuer has no public keys configured")?;
                    let jwk = match &header.kid {
                        Some(kid) => set.find(kid).ok_or_else(|| format!("no key with id {kid:?}"))?,
                        None if set.keys.len() == 1 => &set.keys[0],
                        None => return Err("the token names no key id (kid)".to_owned()),
                    };
                    DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?
                }
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = 5;
        validation.set_issuer(&[iss]);
        // A token not valid yet (`nbf`) is refused like an expired one, and a provider with an
        // `applicationID` accepts only tokens that name it: a token without `aud` was minted
        // for no audience in particular, so also for another application of the same issuer.
        validation.validate_nbf = true;
        match &provider.application_id {
            Some(aud) => {
                validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
                validation.set_audience(&[aud]);
            }
            None => {
                validation.set_required_spec_claims(&["exp", "iss", "sub"]);
                validation.validate_aud = false;
            }
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, Json>>(token, &key, &validation)
            .map_err(|e| format!("token refused: {e}"))?;
        Ok(identity_from_claims(&data.claims))
    }
}

/// Convex's `UserIdentity` from verified claims: `tokenIdentifier`, `subject`, `issuer`, the
/// standard OpenID claims in camelCase, and the other claims as they are.
pub fn identity_from_claims(claims: &serde_json::Map<String, Json>) -> Value {
    const RENAMES: &[(&str, &str)] = &[
        ("name", "name"),
        ("given_name", "givenName"),
        ("family_name", "familyName"),
        ("nickname", "nickname"),
        ("preferred_username", "preferredUsername"),
        ("profile", "profileUrl"),
        ("picture", "pictureUrl"),
        ("email", "email"),
        ("email_verified", "emailVerified"),
        ("gender", "gender"),
        ("birthdate", "birthday"),
        ("zoneinfo", "timezone"),
        ("locale", "language"),
        ("phone_number", "phoneNumber"),
        ("phone_number_verified", "phoneNumberVerified"),
        ("address", "address"),
        ("updated_at", "updatedAt"),
    ];
    const DROPPED: &[&str] = &["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "azp", "auth_time", "nonce"];
    let text = |k: &str| claims.get(k).and_then(Json::as_str).unwrap_or_default().to_owned();
    let (iss, sub) = (text("iss"), text("sub"));
    let mut out = Object::new();
    out.insert("tokenIdentifier".to_owned(), Value::String(format!("{iss}|{sub}")));
    out.insert("subject".to_owned(), Value::String(sub));
    out.insert("issuer".to_owned(), Value::String(iss));
    for (claim, value) in claims {
        if DROPPED.contains(&claim.as_str()) {
            continue;
        }
        let name =
            RENAMES.iter().find(|(c, _)| c == claim).map(|(_, n)| (*n).to_owned()).unwrap_or_else(|| claim.clone());
        // Claims that are not valid Convex values (e.g. `$`-prefixed keys) are left out.
        if let Ok(v) = kiln_value::from_convex_json(value)
            && kiln_value::validation::validate_value(&v).is_ok()
            && !name.starts_with('$')
        {
            out.insert(name, v);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_has_convex_shape() {
        let claims = serde_json::json!({
            "iss": "https://auth.test", "sub": "user-1", "aud": "app", "exp": 1, "email": "a@b.c",
            "email_verified": true, "given_name": "Ada", "org": "kiln"
        });
        let Value::Object(id) = identity_from_claims(claims.as_object().unwrap()) else { panic!() };
        assert_eq!(id["tokenIdentifier"], Value::from("https://auth.test|user-1"));
        assert_eq!(id["subject"], Value::from("user-1"));
        assert_eq!(id["emailVerified"], Value::Boolean(true));
        assert_eq!(id["givenName"], Value::from("Ada"));
        assert_eq!(id["org"], Value::from("kiln"), "custom claims pass through");
        assert!(!id.contains_key("exp") && !id.contains_key("aud"));
    }

    #[test]
    fn default_algorithms_follow_the_key_kind() {
        let hs = AuthProvider { secret: Some("s".into()), ..Default::default() };
        assert_eq!(hs.allowed(), vec![Algorithm::HS256]);
        let rs = AuthProvider { public_key_pem: Some("k".into()), ..Default::default() };
        assert!(!rs.allowed().contains(&Algorithm::HS256), "public keys never allow HMAC");
    }
}
