//! Authentication: who a connection is, and what it may do.
//!
//! * Users are configured with an argon2 password hash and/or the SHA-256 of a bearer
//!   token. A token is a long random secret, so a fast hash is as safe for it as a slow
//!   one, and lets a token be found without trying every user's hash.
//! * With mutual TLS, a client certificate's subject (its CN, or else its first DNS
//!   name) names the user instead.
//! * Without any user configured, every client is anonymous with every permission (and
//!   ternd warns at start). With users, anonymous clients are refused unless
//!   `allow_anonymous = true`, and then get the `[anonymous]` permissions.
//! * A refused login looks the same whether the user exists or not: an unknown user's
//!   password is still checked against a dummy hash, so not even the time differs.

pub mod acl;
pub(crate) mod replies;

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tern_codec::Credentials;

use self::acl::{PermissionSettings, Permissions};

/// One `[[users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub name: String,
    /// An argon2 PHC string, as `ternd passwd` prints it.
    pub password_hash: Option<String>,
    /// The hex SHA-256 of the user's bearer token, as `ternd token` prints it.
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub permissions: PermissionSettings,
}

/// A configured user.
#[derive(Debug)]
struct User {
    password_hash: Option<String>,
    permissions: Arc<Permissions>,
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's name; `None` for an anonymous client.
    pub user: Option<String>,
    pub permissions: Arc<Permissions>,
}

impl Principal {
    /// The broker's own in-process connections.
    pub fn trusted() -> Self {
        Self {
            user: Some("ternd".into()),
            permissions: Arc::new(Permissions::all()),
        }
    }
}

/// Why a login was refused. Never shown to the client, which learns only that it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credentials, and anonymous clients are not allowed")]
    AnonymousRefused,
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    #[error("wrong password for user '{0}'")]
    WrongPassword(String),
    #[error("unknown token")]
    UnknownToken,
    #[error("certificate names '{0}', which is not a configured user")]
    UnknownCertificate(String),
}

/// Users and the anonymous policy, resolved from the config.
#[derive(Debug)]
pub struct Auth {
    users: HashMap<String, User>,
    by_token: HashMap<[u8; 32], String>,
    allow_anonymous: bool,
    anonymous: Arc<Permissions>,
    /// Checked for unknown users, so that they cost the same time as known ones.
    dummy_hash: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            users: HashMap::new(),
            by_token: HashMap::new(),
            allow_anonymous: true,
            anonymous: Arc::new(Permissions::all()),
            dummy_hash: String::new(),
        }
    }
}

/// Hashes a password the way `password_hash` expects (argon2id, default cost).
///
/// # Errors
///
/// Only if argon2 itself fails (it does not for sane inputs).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The hex SHA-256 of a token, as `token_sha256` expects.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = s.get(i * 2..i * 2 + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl Auth {
    /// Builds the user table.
    ///
    /// # Errors
    ///
    /// `(key, reason)`: an empty or repeated user name, a password hash that is not an
    /// argon2 PHC string, a token hash that is not 64 hex digits, an invalid pattern.
    pub fn new(
        users: Vec<UserSettings>,
        allow_anonymous: Option<bool>,
        anonymous: PermissionSettings,
        limits: &tern_codec::SubjectLimits,
    ) -> Result<Self, (String, String)> {
        let check_patterns = |who: &str, p: &PermissionSettings| {
            for (key, pattern) in p.patterns() {
                tern_codec::subject::validate_pattern(pattern, limits).map_err(|e| {
                    (
                        format!("{who}.{key}"),
                        format!("'{pattern}' is not a valid pattern: {e}"),
                    )
                })?;
            }
            Ok::<(), (String, String)>(())
        };
        check_patterns("anonymous", &anonymous)?;
        let mut auth = Auth {
            allow_anonymous: allow_anonymous.unwrap_or(users.is_empty()),
            anonymous: Arc::new(if users.is_empty() {
                Permissions::all()
            } else {
                Permissions::from_settings(anonymous)
            }),
            ..Auth::default()
        };
        for u in users {
            let key = |k: &str| format!("users[{}].{k}", u.name);
            if u.name.is_empty() {
                return Err(("users.name".into(), "a user name is empty".into()));
            }
            if auth.users.contains_key(&u.name) {
                return Err((key("name"), "the user is configured twice".into()));
            }
            if let Some(h) = &u.password_hash {
                check_password_hash(h).map_err(|why| (key("password_hash"), why))?;
            }
            if let Some(t) = &u.token_sha256 {
                let digest = parse_hex32(t).ok_or_else(|| {
                    (
                        key("token_sha256"),
                        "must be 64 hex digits; make one with `ternd token`".into(),
                    )
                })?;
                auth.by_token.insert(digest, u.name.clone());
            }
            check_patterns(&format!("users[{}].permissions", u.name), &u.permissions)?;
            auth.users.insert(
                u.name,
                User {
                    password_hash: u.password_hash,
                    permissions: Arc::new(Permissions::from_settings(u.permissions)),
                },
            );
        }
        auth.dummy_hash = auth.dummy_hash_like_users()?;
        Ok(auth)
    }

    /// A hash of nothing anyone knows, with the same argon2 cost as the configured
    /// users' hashes, so that an unknown user takes as long to refuse as a known one.
    fn dummy_hash_like_users(&self) -> Result<String, (String, String)> {
        let Some(model) = self.users.values().find_map(|u| u.password_hash.as_deref()) else {
            return Ok(String::new());
        };
        let parsed = PasswordHash::new(model).map_err(|e| ("users".to_string(), e.to_string()))?;
        let params =
            argon2::Params::try_from(&parsed).map_err(|e| ("users".to_string(), e.to_string()))?;
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"no user has this password", &salt)
            .map(|h| h.to_string())
            .map_err(|e| ("users".to_string(), e.to_string()))
    }

    /// Whether any user is configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether any user logs in with a password (which a plaintext listener would
    /// carry in the clear).
    pub fn has_passwords(&self) -> bool {
        self.users.values().any(|u| u.password_hash.is_some())
    }

    /// Whether clients without credentials are let in.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Decides who a connection is, from its HELLO credentials and its client
    /// certificate's identity. Slow on purpose (argon2): call it off the async threads.
    ///
    /// # Errors
    ///
    /// The credentials are wrong, the certificate names no user, or anonymous clients
    /// are not allowed.
    pub fn authenticate(
        &self,
        credentials: Option<&Credentials>,
        certificate: Option<&str>,
    ) -> Result<Principal, AuthFailure> {
        if let Some(name) = certificate {
            return match self.users.get(name) {
                Some(u) => Ok(Principal {
                    user: Some(name.to_string()),
                    permissions: Arc::clone(&u.permissions),
                }),
                None => Err(AuthFailure::UnknownCertificate(name.to_string())),
            };
        }
        match credentials {
            None if self.allow_anonymous => Ok(Principal {
                user: None,
                permissions: Arc::clone(&self.anonymous),
            }),
            None => Err(AuthFailure::AnonymousRefused),
            Some(Credentials::Password { user, password }) => {
                let found = self.users.get(&**user);
                let hash = found
                    .and_then(|u| u.password_hash.as_deref())
                    .unwrap_or(&self.dummy_hash);
                let verified = PasswordHash::new(hash).is_ok_and(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                });
                match found {
                    Some(u) if verified && u.password_hash.is_some() => Ok(Principal {
                        user: Some(user.to_string()),
                        permissions: Arc::clone(&u.permissions),
                    }),
                    Some(_) => Err(AuthFailure::WrongPassword(user.to_string())),
                    None => Err(AuthFailure::UnknownUser(user.to_string())),
                }
            }
            Some(Credentials::Token(token)) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let name = self
                    .by_token
                    .get(&digest)
                    .ok_or(AuthFailure::UnknownToken)?;
                let u = self.users.get(name).ok_or(AuthFailure::UnknownToken)?;
                Ok(Principal {
                    user: Some(name.clone()),
                    permissions: Arc::clone(&u.permissions),
                })
            }
        }
    }
}

/// Most argon2 cost a configured hash may ask for: every login (and every refusal of an
/// unknown user, which costs the same) pays it, so a hash with a huge cost would make
/// ternd hang at start (computing the refusal hash) and on each login. `ternd passwd`
/// makes hashes of m = 19 MiB, t = 2, p = 1.
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ARGON2_TIME: u32 = 16;
const MAX_ARGON2_LANES: u32 = 16;

/// Checks that `hash` is an argon2 PHC string of a cost ternd can afford.
fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not an argon2 hash ({e}); make one with `ternd passwd`"))?;
    if argon2::Algorithm::try_from(parsed.algorithm).is_err() {
        return Err(format!(
            "not an argon2 hash (algorithm '{}'); make one with `ternd passwd`",
            parsed.algorithm
        ));
    }
    let params = argon2::Params::try_from(&parsed)
        .map_err(|e| format!("not an argon2 hash ({e}); make one with `ternd passwd`"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB
        || params.t_cost() > MAX_ARGON2_TIME
        || params.p_cost() > MAX_ARGON2_LANES
    {
        return Err(format!(
            "argon2 cost too high (m={} KiB, t={}, p={}; at most m={MAX_ARGON2_MEMORY_KIB}, \
             t={MAX_ARGON2_TIME}, p={MAX_ARGON2_LANES}): every login would pay it; make one \
             with `ternd passwd`",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Params, Version};

    /// A hash with a tiny cost, so that tests run fast even unoptimised.
    pub(crate) fn cheap_hash(password: &str) -> String {
        let params = Params::new(8, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn user(name: &str, password: Option<&str>, token: Option<&str>) -> UserSettings {
        UserSettings {
            name: name.into(),
            password_hash: password.map(cheap_hash),
            token_sha256: token.map(token_sha256),
            permissions: PermissionSettings::default(),
        }
    }

    fn auth(users: Vec<UserSettings>, anon: Option<bool>) -> Auth {
        Auth::new(
            users,
            anon,
            PermissionSettings::default(),
            &Default::default(),
        )
        .unwrap()
    }

    fn password(user: &str, pw: &str) -> Credentials {
        Credentials::Password {
            user: user.into(),
            password: pw.into(),
        }
    }

    #[test]
    fn no_users_means_anonymous_with_everything() {
        let a = auth(vec![], None);
        let p = a.authenticate(None, None).unwrap();
        assert_eq!(p.user, None);
        assert!(p.permissions.admin);
    }

    #[test]
    fn passwords_tokens_and_certificates() {
        let a = auth(
            vec![
                user("alice", Some("s3cret"), None),
                user("bot", None, Some("tok-123")),
                user("sensor-7", None, None),
            ],
            None,
        );
        assert_eq!(
            a.authenticate(Some(&password("alice", "s3cret")), None)
                .unwrap()
                .user
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            a.authenticate(Some(&password("alice", "nope")), None)
                .unwrap_err(),
            AuthFailure::WrongPassword("alice".into())
        );
        assert_eq!(
            a.authenticate(Some(&password("mallory", "s3cret")), None)
                .unwrap_err(),
            AuthFailure::UnknownUser("mallory".into())
        );
        assert_eq!(
            a.authenticate(Some(&password("bot", "")), None)
                .unwrap_err(),
            AuthFailure::WrongPassword("bot".into()),
            "a user without a password hash cannot log in with one"
        );
        let token = Credentials::Token("tok-123".into());
        assert_eq!(
            a.authenticate(Some(&token), None).unwrap().user.as_deref(),
            Some("bot")
        );
        let bad = Credentials::Token("tok-124".into());
        assert_eq!(
            a.authenticate(Some(&bad), None).unwrap_err(),
            AuthFailure::UnknownToken
        );
        assert_eq!(
            a.authenticate(None, Some("sensor-7"))
                .unwrap()
                .user
                .as_deref(),
            Some("sensor-7")
        );
        assert!(a.authenticate(None, Some("sensor-8")).is_err());
        assert_eq!(
            a.authenticate(None, None).unwrap_err(),
            AuthFailure::AnonymousRefused
        );
    }

    #[test]
    fn anonymous_can_be_allowed_with_its_own_permissions() {
        let anon = PermissionSettings {
            subscribe: Some(vec!["public.>".into()]),
            ..PermissionSettings::default()
        };
        let a = Auth::new(
            vec![user("alice", Some("x"), None)],
            Some(true),
            anon,
            &Default::default(),
        )
        .unwrap();
        let p = a.authenticate(None, None).unwrap();
        assert!(p.permissions.subscribe.allows_pattern("public.news"));
        assert!(!p.permissions.subscribe.allows_pattern("private.x"));
        assert!(!p.permissions.admin);
    }

    /// Found by the config fuzz target: a hash asking for 970 argon2 passes made the
    /// config loader compute the refusal hash at that cost, for over 10 s; a larger
    /// cost would hang ternd at start and on every login.
    #[test]
    fn a_hash_of_unaffordable_cost_or_another_algorithm_is_refused() {
        let limits = Default::default();
        for (hash, why) in [
            ("$id$t=970", "algorithm 'id'"),
            (
                "$argon2id$v=19$m=19456,t=970,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "cost too high",
            ),
            (
                "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "cost too high",
            ),
        ] {
            let mut bad = user("alice", None, None);
            bad.password_hash = Some(hash.into());
            let (key, message) =
                Auth::new(vec![bad], None, PermissionSettings::default(), &limits).unwrap_err();
            assert_eq!(key, "users[alice].password_hash");
            assert!(message.contains(why), "{hash}: {message}");
        }
        let mut good = user("alice", None, None);
        good.password_hash = Some(cheap_hash("secret"));
        assert!(Auth::new(vec![good], None, PermissionSettings::default(), &limits).is_ok());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let limits = Default::default();
        let mut bad = user("alice", None, None);
        bad.password_hash = Some("plaintext".into());
        let (key, _) =
            Auth::new(vec![bad], None, PermissionSettings::default(), &limits).unwrap_err();
        assert_eq!(key, "users[alice].password_hash");
        let mut bad = user("bob", None, None);
        bad.token_sha256 = Some("abc".into());
        let (key, _) =
            Auth::new(vec![bad], None, PermissionSettings::default(), &limits).unwrap_err();
        assert_eq!(key, "users[bob].token_sha256");
        let mut bad = user("carol", None, None);
        bad.permissions.publish = Some(vec!["a..b".into()]);
        let (key, _) =
            Auth::new(vec![bad], None, PermissionSettings::default(), &limits).unwrap_err();
        assert_eq!(key, "users[carol].permissions.publish");
        let (key, _) = Auth::new(
            vec![user("d", None, None), user("d", None, None)],
            None,
            PermissionSettings::default(),
            &limits,
        )
        .unwrap_err();
        assert_eq!(key, "users[d].name");
    }

    #[test]
    fn generated_hashes_verify() {
        let a = Auth::new(
            vec![UserSettings {
                name: "u".into(),
                password_hash: Some(hash_password("pw").unwrap()),
                token_sha256: None,
                permissions: PermissionSettings::default(),
            }],
            None,
            PermissionSettings::default(),
            &Default::default(),
        )
        .unwrap();
        assert!(a.authenticate(Some(&password("u", "pw")), None).is_ok());
    }
}
