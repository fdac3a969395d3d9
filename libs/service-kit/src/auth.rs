//! Who may read payment data: one bearer token per calling service.
//!
//! `GET /payments/{id}` hands out customer ids and amounts, and so do
//! ServiceA's copy and audit log and ServiceB's records. Those routes answer
//! only a caller that sends `Authorization: Bearer <token>` with a token the
//! service knows; anything else is 401. `/health`, `/ready`, `/metrics` and
//! `/openapi.json` stay open: they hold no customer data.
//!
//! Why bearer tokens, one per caller, and not mutual TLS or signed JWTs:
//!
//! - Each caller proves who it is with a secret of its own, so a leaked
//!   token is revoked by replacing one caller's entry, and the logs and
//!   spans name the caller (`enduser.id`).
//! - A service holds only the SHA-256 digests of its callers' tokens
//!   ([`Callers`], `HTTP_CALLERS`), never the tokens: reading its
//!   environment does not let anyone call it. Tokens are 256 random bits
//!   ([`Token::generate`]), so a plain hash is enough; a slow password hash
//!   protects guessable secrets, which these are not.
//! - Nothing else to run or rotate: no certificate authority, no key
//!   distribution, no clock skew. What it does not give is encryption on
//!   the wire: in production the token travels over TLS (a mesh or an
//!   ingress terminates it), as any bearer credential must.
//!
//! Tokens come from the environment only (`cargo xtask credentials` makes a
//! set into `.env`, which git ignores), and neither [`Token`] nor
//! [`Callers`] shows a secret in `Debug`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use crate::http::ErrorBody;

/// The environment variable listing a service's callers (see [`Callers`]).
pub const HTTP_CALLERS: &str = "HTTP_CALLERS";

/// Shortest token accepted: 128 bits as hex. Generated ones are twice that.
const MIN_TOKEN_LEN: usize = 32;

/// A caller's secret, sent as `Authorization: Bearer <token>`. Its `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// 256 bits from the operating system's random source, as 64 hex digits.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source to give.
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        Self(hex::encode(bytes))
    }

    /// What a service that accepts this token holds of it.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The token itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header carrying this token, marked sensitive so
    /// that HTTP libraries leave it out of their logs.
    pub fn authorization(&self) -> HeaderValue {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", self.0)).expect("a token is visible ASCII");
        value.set_sensitive(true);
        value
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < MIN_TOKEN_LEN {
            return Err(format!("a token has at least {MIN_TOKEN_LEN} characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is visible ASCII, without spaces".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(not shown)")
    }
}

/// The SHA-256 digest of a [`Token`], as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Compares in time independent of where the two differ, so an answer's
    /// timing does not tell how much of a digest a guess got right.
    fn matches(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .fold(0, |differ, (a, b)| differ | (a ^ b))
            == 0
    }
}

impl FromStr for TokenDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digest = [0_u8; 32];
        hex::decode_to_slice(s, &mut digest)
            .map_err(|_| "a token's digest is 64 hex digits (SHA-256)".to_owned())?;
        Ok(Self(digest))
    }
}

impl fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

/// The callers a service answers on its protected routes: `HTTP_CALLERS`,
/// comma-separated `name:digest` entries, each the caller's name (what the
/// logs say) and the SHA-256 of its token, e.g.
/// `service-b:3f0a…,operator:91c2…`. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Callers(Arc<[(String, TokenDigest)]>);

impl Callers {
    /// Callers from `(name, token)` pairs, as a service that made the tokens
    /// (a test, `cargo xtask`) configures its peers.
    pub fn of<'a>(callers: impl IntoIterator<Item = (&'a str, &'a Token)>) -> Self {
        Self(
            callers
                .into_iter()
                .map(|(name, token)| (name.to_owned(), token.digest()))
                .collect(),
        )
    }

    /// The names, for the startup log.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Who sent `headers`' bearer token, or why nobody known did.
    pub fn identify(&self, headers: &HeaderMap) -> Result<&str, Refusal> {
        let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::NoToken)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Refusal::NotBearer)?;
        let digest = Token(token.to_owned()).digest();
        // Every entry is compared, so the time taken does not say which
        // entry (if any) matched.
        let mut known = None;
        for (name, expected) in self.0.iter() {
            if expected.matches(&digest) {
                known = Some(name.as_str());
            }
        }
        known.ok_or(Refusal::UnknownToken)
    }

    /// Renders `HTTP_CALLERS`' value.
    pub fn to_env(&self) -> String {
        self.0
            .iter()
            .map(|(name, digest)| format!("{name}:{digest}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromStr for Callers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut callers: Vec<(String, TokenDigest)> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, digest) = entry
                .split_once(':')
                .ok_or_else(|| "each entry is name:sha256-of-token".to_owned())?;
            let name = name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "caller names are 1 to 64 letters, digits, '-' or '_', not {name:?}"
                ));
            }
            if callers.iter().any(|(known, _)| known == name) {
                return Err(format!("caller {name} is listed twice"));
            }
            callers.push((name.to_owned(), digest.trim().parse()?));
        }
        if callers.is_empty() {
            return Err("no callers listed".to_owned());
        }
        Ok(Self(callers.into()))
    }
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Callers").field(&self.names()).finish()
    }
}

/// One set of credentials for the three services: ServiceB's token for
/// Payments' callback, and an operator's token that reads every service.
/// What `cargo xtask credentials` writes into `.env` and what the tests give
/// the services they start. Who may call whom is decided here, once.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub service_b: Token,
    pub operator: Token,
}

impl Credentials {
    /// A fresh set.
    pub fn generate() -> Self {
        Self {
            service_b: Token::generate(),
            operator: Token::generate(),
        }
    }

    /// Who may call `service` (by its Kafka client id): Payments answers
    /// ServiceB's callback and the operator; ServiceA and ServiceB answer
    /// the operator only, since nothing calls them.
    pub fn callers_of(&self, service: &str) -> Callers {
        if service == "payments-service" {
            Callers::of([("service-b", &self.service_b), ("operator", &self.operator)])
        } else {
            Callers::of([("operator", &self.operator)])
        }
    }

    /// The environment `service` needs: its `HTTP_CALLERS`, and for
    /// ServiceB its `PAYMENTS_TOKEN`.
    pub fn env_of(&self, service: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![(HTTP_CALLERS, self.callers_of(service).to_env())];
        if service == "service-b" {
            env.push(("PAYMENTS_TOKEN", self.service_b.expose().to_owned()));
        }
        env
    }
}

/// Why a request was refused: all 401, with different messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this route needs Authorization: Bearer <token>")]
    NoToken,
    #[error("the Authorization header is not Bearer <token>")]
    NotBearer,
    #[error("the token is not one of this service's callers")]
    UnknownToken,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response =
            ErrorBody::new("unauthorized", self.to_string()).into_response(StatusCode::UNAUTHORIZED);
        // RFC 6750: a 401 names the scheme that would be accepted.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Middleware: lets a request through only from one of `callers`, and names
/// the caller in the request's span (`enduser.id`, see
/// [`crate::http::serve`]).
pub async fn require_caller(State(callers): State<Callers>, request: Request, next: Next) -> Response {
    match callers.identify(request.headers()) {
        Ok(caller) => {
            tracing::Span::current().record("enduser.id", caller);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::warn!(reason = %refusal, path = request.uri().path(), "caller refused");
            refusal.into_response()
        }
    }
}

/// `router`'s routes answer only `callers`; routes merged in afterwards
/// (the OpenAPI document) are not affected.
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    callers: Callers,
) -> axum::Router<S> {
    tracing::info!(callers = ?callers.names(), "payment data is served to these callers only");
    router.route_layer(axum::middleware::from_fn_with_state(callers, require_caller))
}

/// The OpenAPI security scheme of [`protect`]ed routes: each such path
/// carries `security(("caller_token" = []))` and a 401 response.
#[derive(Debug)]
pub struct CallerTokenScheme;

/// The name the OpenAPI documents give the scheme.
pub const SECURITY_SCHEME: &str = "caller_token";

impl utoipa::Modify for CallerTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "One token per calling service, from its environment; the service holds the token's \
             SHA-256 in HTTP_CALLERS. 401 without a known token."
                .to_owned(),
        );
        components.add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("header"),
        );
        headers
    }

    #[test]
    fn a_known_token_names_its_caller_and_anything_else_is_refused() {
        let (b, operator, stranger) = (Token::generate(), Token::generate(), Token::generate());
        let callers = Callers::of([("service-b", &b), ("operator", &operator)]);
        let bearer = |t: &Token| headers(&format!("Bearer {}", t.expose()));
        assert_eq!(callers.identify(&bearer(&b)), Ok("service-b"));
        assert_eq!(callers.identify(&bearer(&operator)), Ok("operator"));
        assert_eq!(
            callers.identify(&headers(&format!("bearer {}", b.expose()))),
            Ok("service-b"),
            "the scheme is case-insensitive (RFC 7235)"
        );
        assert_eq!(callers.identify(&bearer(&stranger)), Err(Refusal::UnknownToken));
        assert_eq!(callers.identify(&HeaderMap::new()), Err(Refusal::NoToken));
        assert_eq!(
            callers.identify(&headers(&format!("Basic {}", b.expose()))),
            Err(Refusal::NotBearer)
        );
        assert_eq!(callers.identify(&headers("Bearer")), Err(Refusal::NotBearer));
        assert_eq!(callers.identify(&headers("Bearer ")), Err(Refusal::UnknownToken));
    }

    #[test]
    fn http_callers_round_trips_and_bad_lists_are_refused_with_a_reason() {
        let (b, operator) = (Token::generate(), Token::generate());
        let callers = Callers::of([("service-b", &b), ("operator", &operator)]);
        let parsed: Callers = callers.to_env().parse().expect("parses");
        assert_eq!(parsed, callers);
        assert_eq!(
            parsed.identify(&headers(&format!("Bearer {}", b.expose()))),
            Ok("service-b")
        );

        let digest = b.digest().to_string();
        for (value, reason) in [
            ("", "no callers"),
            ("service-b", "name:sha256"),
            ("service-b:abc", "64 hex"),
            (&format!("service b:{digest}") as &str, "caller names"),
            (&format!(":{digest}"), "caller names"),
            (&format!("a:{digest},a:{digest}"), "twice"),
        ] {
            let error = value.parse::<Callers>().expect_err(value);
            assert!(error.contains(reason), "{value:?}: {error}");
        }
    }

    #[test]
    fn debug_never_shows_a_token_or_only_digests() {
        let token = Token::generate();
        let callers = Callers::of([("service-b", &token)]);
        for shown in [format!("{token:?}"), format!("{callers:?}")] {
            assert!(!shown.contains(token.expose()), "{shown}");
            assert!(!shown.contains(&token.digest().to_string()), "{shown}");
        }
        assert_eq!(format!("{callers:?}"), r#"Callers(["service-b"])"#);
        assert!(token.authorization().is_sensitive());
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!("too-short".parse::<Token>().is_err());
        assert!(format!("{} x", "a".repeat(40)).parse::<Token>().is_err());
        assert_eq!(Token::generate().expose().len(), 64);
        assert_ne!(Token::generate(), Token::generate());
    }

    #[tokio::test]
    async fn protected_routes_answer_401_with_the_scheme_and_let_callers_through() {
        let token = Token::generate();
        let app = protect(
            axum::Router::new().route("/secret", get(|| async { "data" })),
            Callers::of([("service-b", &token)]),
        )
        .route("/open", get(|| async { "open" }));
        let call = |path: &str, authorization: Option<HeaderValue>| {
            let mut request = Request::get(path);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            app.clone().oneshot(request.body(Body::empty()).expect("request"))
        };

        let refused = call("/secret", None).await.expect("answer");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = axum::body::to_bytes(refused.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"], "unauthorized");

        let wrong = call("/secret", Some(Token::generate().authorization()))
            .await
            .expect("answer");
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let allowed = call("/secret", Some(token.authorization()))
            .await
            .expect("answer");
        assert_eq!(allowed.status(), StatusCode::OK);
        let open = call("/open", None).await.expect("answer");
        assert_eq!(
            open.status(),
            StatusCode::OK,
            "routes added after protect() stay open"
        );
    }
}
