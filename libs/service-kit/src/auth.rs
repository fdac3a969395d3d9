//! Who may read payment data, and who may refund: one bearer token per
//! calling service, and per caller the rights it was given.
//!
//! `GET /payments/{id}` hands out customer ids and amounts, and so do
//! ServiceA's copy and audit log and ServiceB's records; a refund moves
//! money. Those routes answer only a caller that sends `Authorization:
//! Bearer <token>` with a token the service knows (else 401) and that was
//! given the [`Right`] the route needs (else 403): ServiceB reads payments
//! for its callback and may not refund them. `/health`, `/ready`,
//! `/metrics` and `/openapi.json` stay open: they hold no customer data.
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
use shared_events::services::{OPERATOR, PAYMENTS, SERVICE_B};

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

/// What a route that needs [`Right::Read`] answers a caller it does not let
/// in, for the OpenAPI documents: `responses(…, ReadRefused)`.
#[derive(Debug, utoipa::IntoResponses)]
pub enum ReadRefused {
    /// No bearer token, or one this service does not know
    #[response(status = 401)]
    Unknown(ErrorBody),
    /// A known caller not given the right to read
    #[response(status = 403)]
    NotGranted(ErrorBody),
}

/// [`ReadRefused`] for a route that needs [`Right::Refund`].
#[derive(Debug, utoipa::IntoResponses)]
pub enum RefundRefused {
    /// No bearer token, or one this service does not know
    #[response(status = 401)]
    Unknown(ErrorBody),
    /// A known caller not given the right to refund
    #[response(status = 403)]
    NotGranted(ErrorBody),
}

/// What a protected route needs of its caller. Given per caller in
/// `HTTP_CALLERS`, so a caller that only reads (ServiceB's callback) cannot
/// change anything even with its token in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Read payment data: the `GET` routes of every service.
    Read,
    /// Refund a payment (`POST /payments/{id}/refunds`): it moves money.
    Refund,
}

impl Right {
    const ALL: [Self; 2] = [Self::Read, Self::Refund];

    /// Its name in `HTTP_CALLERS`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Refund => "refund",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The rights one caller was given; in `HTTP_CALLERS` their names joined by
/// `+` (`read+refund`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    /// Reading only: what a caller listed without rights gets.
    pub const READ: Self = Self::of(&[Right::Read]);
    /// Reading and refunding: the operator's.
    pub const READ_REFUND: Self = Self::of(&[Right::Read, Right::Refund]);

    /// Exactly `rights`.
    pub const fn of(rights: &[Right]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < rights.len() {
            bits |= rights[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Whether `right` is among them.
    pub const fn allows(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }
}

impl FromStr for Rights {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bits = 0;
        for name in s.split('+').map(str::trim) {
            let right = Right::ALL.into_iter().find(|r| r.name() == name).ok_or_else(|| {
                let known: Vec<_> = Right::ALL.iter().map(|r| r.name()).collect();
                format!(
                    "unknown right {name:?}: rights are {} joined by '+'",
                    known.join(", ")
                )
            })?;
            bits |= right.bit();
        }
        Ok(Self(bits))
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Right::ALL
            .into_iter()
            .filter(|r| self.allows(*r))
            .map(Right::name)
            .collect();
        f.write_str(&names.join("+"))
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rights({self})")
    }
}

/// One entry of [`Callers`].
#[derive(Clone, PartialEq, Eq)]
struct Caller {
    name: String,
    rights: Rights,
    digest: TokenDigest,
}

/// The callers a service answers on its protected routes: `HTTP_CALLERS`,
/// comma-separated `name:rights:digest` entries, each the caller's name
/// (what the logs say), its [`Rights`] and the SHA-256 of its token, e.g.
/// `service-b:read:3f0a…,operator:read+refund:91c2…`. An entry without
/// rights (`name:digest`) may read only. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Callers(Arc<[Caller]>);

impl Callers {
    /// Callers from `(name, rights, token)`, as a service that made the
    /// tokens (a test, `cargo xtask`) configures its peers.
    pub fn of<'a>(callers: impl IntoIterator<Item = (&'a str, Rights, &'a Token)>) -> Self {
        Self(
            callers
                .into_iter()
                .map(|(name, rights, token)| Caller {
                    name: name.to_owned(),
                    rights,
                    digest: token.digest(),
                })
                .collect(),
        )
    }

    /// The names, for the startup log.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|caller| caller.name.as_str()).collect()
    }

    /// The caller that sent `headers`' bearer token if it may exercise
    /// `right`: [`Refusal::NotAllowed`] (403) for a known caller without it,
    /// another [`Refusal`] (401) when nobody known sent it.
    pub fn authorize(&self, headers: &HeaderMap, right: Right) -> Result<&str, Refusal> {
        let (name, rights) = self.identify(headers)?;
        if rights.allows(right) {
            Ok(name)
        } else {
            Err(Refusal::NotAllowed(right))
        }
    }

    /// Who sent `headers`' bearer token, with its rights, or why nobody
    /// known did.
    pub fn identify(&self, headers: &HeaderMap) -> Result<(&str, Rights), Refusal> {
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
        for caller in self.0.iter() {
            if caller.digest.matches(&digest) {
                known = Some((caller.name.as_str(), caller.rights));
            }
        }
        known.ok_or(Refusal::UnknownToken)
    }

    /// Renders `HTTP_CALLERS`' value.
    pub fn to_env(&self) -> String {
        self.0
            .iter()
            .map(|caller| format!("{}:{}:{}", caller.name, caller.rights, caller.digest))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromStr for Callers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut callers: Vec<Caller> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
            let (name, rights, digest) = match parts[..] {
                [name, digest] => (name, Rights::READ, digest),
                [name, rights, digest] => (name, rights.parse()?, digest),
                _ => {
                    return Err(
                        "each entry is name:rights:sha256-of-token (rights: read, refund, or read+refund)"
                            .to_owned(),
                    );
                }
            };
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
            if callers.iter().any(|known| known.name == name) {
                return Err(format!("caller {name} is listed twice"));
            }
            callers.push(Caller {
                name: name.to_owned(),
                rights,
                digest: digest.parse()?,
            });
        }
        if callers.is_empty() {
            return Err("no callers listed".to_owned());
        }
        Ok(Self(callers.into()))
    }
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|caller| (&caller.name, caller.rights)))
            .finish()
    }
}

/// One set of credentials for the three services: ServiceB's token for
/// Payments' callback, and an operator's token that reads every service and
/// refunds.
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
    /// ServiceB's callback (reading only) and the operator (reading and
    /// refunding); ServiceA and ServiceB answer the operator only, since
    /// nothing calls them.
    pub fn callers_of(&self, service: &str) -> Callers {
        if service == PAYMENTS.name {
            Callers::of([
                (SERVICE_B.name, Rights::READ, &self.service_b),
                (OPERATOR, Rights::READ_REFUND, &self.operator),
            ])
        } else {
            Callers::of([(OPERATOR, Rights::READ, &self.operator)])
        }
    }

    /// The environment `service` needs: its `HTTP_CALLERS`, and for
    /// ServiceB its `PAYMENTS_TOKEN`.
    pub fn env_of(&self, service: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![(HTTP_CALLERS, self.callers_of(service).to_env())];
        if service == SERVICE_B.name {
            env.push(("PAYMENTS_TOKEN", self.service_b.expose().to_owned()));
        }
        env
    }
}

/// Why a request was refused: 401 when the caller is not known, 403 when it
/// is and lacks the route's right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 401.
    #[error("this route needs Authorization: Bearer <token>")]
    NoToken,
    /// 401.
    #[error("the Authorization header is not Bearer <token>")]
    NotBearer,
    /// 401.
    #[error("the token is not one of this service's callers")]
    UnknownToken,
    /// 403: a known caller whose `HTTP_CALLERS` entry lacks the right.
    #[error("this caller was not given the right to {0} here")]
    NotAllowed(Right),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if let Self::NotAllowed(_) = self {
            return ErrorBody::new("forbidden", self.to_string()).into_response(StatusCode::FORBIDDEN);
        }
        let mut response =
            ErrorBody::new("unauthorized", self.to_string()).into_response(StatusCode::UNAUTHORIZED);
        // RFC 6750: a 401 names the scheme that would be accepted.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Middleware: lets a request through only from one of `callers` given
/// `right`, and names the caller in the request's span (`enduser.id`, see
/// [`crate::http::serve`]).
pub async fn require_caller(
    State((callers, right)): State<(Callers, Right)>,
    request: Request,
    next: Next,
) -> Response {
    match callers.authorize(request.headers(), right) {
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

/// `router`'s routes answer only those of `callers` given `right`; routes
/// merged in afterwards (the OpenAPI document) are not affected.
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    callers: Callers,
    right: Right,
) -> axum::Router<S> {
    tracing::info!(%right, callers = ?callers, "these routes answer only callers given this right");
    router.route_layer(axum::middleware::from_fn_with_state(
        (callers, right),
        require_caller,
    ))
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
             SHA-256 in HTTP_CALLERS with the rights it was given. 401 without a known token, \
             403 for a caller without the route's right (read, or refund)."
                .to_owned(),
        );
        components.add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::{get, post};
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
        let callers = Callers::of([
            ("service-b", Rights::READ, &b),
            ("operator", Rights::READ_REFUND, &operator),
        ]);
        let bearer = |t: &Token| headers(&format!("Bearer {}", t.expose()));
        assert_eq!(callers.identify(&bearer(&b)), Ok(("service-b", Rights::READ)));
        assert_eq!(
            callers.identify(&bearer(&operator)),
            Ok(("operator", Rights::READ_REFUND))
        );
        assert_eq!(
            callers.identify(&headers(&format!("bearer {}", b.expose()))),
            Ok(("service-b", Rights::READ)),
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
        let callers = Callers::of([
            ("service-b", Rights::READ, &b),
            ("operator", Rights::READ_REFUND, &operator),
        ]);
        let env = callers.to_env();
        assert!(env.starts_with("service-b:read:"), "{env}");
        assert!(env.contains(",operator:read+refund:"), "{env}");
        let parsed: Callers = env.parse().expect("parses");
        assert_eq!(parsed, callers);
        assert_eq!(
            parsed.identify(&headers(&format!("Bearer {}", b.expose()))),
            Ok(("service-b", Rights::READ))
        );

        let digest = b.digest().to_string();
        let without_rights: Callers = format!("service-b:{digest}").parse().expect("parses");
        assert_eq!(
            without_rights,
            Callers::of([("service-b", Rights::READ, &b)]),
            "an entry without rights may read only"
        );
        let refund_only: Callers = format!("desk:refund:{digest}").parse().expect("parses");
        assert_eq!(
            refund_only,
            Callers::of([("desk", Rights::of(&[Right::Refund]), &b)])
        );
        for (value, reason) in [
            ("", "no callers"),
            ("service-b", "name:rights:sha256"),
            ("service-b:abc", "64 hex"),
            (
                &format!("service-b:write:{digest}") as &str,
                "unknown right \"write\"",
            ),
            (&format!("service-b:read+:{digest}"), "unknown right \"\""),
            (&format!("a:read:b:{digest}"), "name:rights:sha256"),
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
        let callers = Callers::of([("service-b", Rights::READ, &token)]);
        for shown in [format!("{token:?}"), format!("{callers:?}")] {
            assert!(!shown.contains(token.expose()), "{shown}");
            assert!(!shown.contains(&token.digest().to_string()), "{shown}");
        }
        assert_eq!(format!("{callers:?}"), r#"{"service-b": Rights(read)}"#);
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
    async fn unknown_callers_get_401_callers_without_the_right_403_and_the_rest_pass() {
        let (token, operator) = (Token::generate(), Token::generate());
        let callers = Callers::of([
            ("service-b", Rights::READ, &token),
            ("operator", Rights::READ_REFUND, &operator),
        ]);
        let app = protect(
            axum::Router::new().route("/secret", get(|| async { "data" })),
            callers.clone(),
            Right::Read,
        )
        .merge(protect(
            axum::Router::new().route("/refund", post(|| async { "refunded" })),
            callers,
            Right::Refund,
        ))
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

        // A known caller without the route's right: 403, not 401 (its token
        // is fine; asking again with it will not help).
        let refund = |authorization| {
            app.clone().oneshot(
                Request::post("/refund")
                    .header(header::AUTHORIZATION, authorization)
                    .body(Body::empty())
                    .expect("request"),
            )
        };
        let forbidden = refund(token.authorization()).await.expect("answer");
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(!forbidden.headers().contains_key(header::WWW_AUTHENTICATE));
        let body = axum::body::to_bytes(forbidden.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"], "forbidden");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("refund")),
            "{body}"
        );
        let unknown = refund(Token::generate().authorization()).await.expect("answer");
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        let refunded = refund(operator.authorization()).await.expect("answer");
        assert_eq!(refunded.status(), StatusCode::OK);

        let open = call("/open", None).await.expect("answer");
        assert_eq!(
            open.status(),
            StatusCode::OK,
            "routes added after protect() stay open"
        );
    }
}
