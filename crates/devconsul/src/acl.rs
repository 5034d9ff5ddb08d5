//! ACL emulation (consul-api.md section T): tokens with policies in Consul's JSON rule syntax
//! (`key`/`key_prefix`, `session`/`session_prefix`, `service`/`service_prefix`,
//! `node`/`node_prefix`, `agent`/`agent_prefix`, each `{"<name>": {"policy": "read" | "write" |
//! "deny" | "list"}}`), resolved the way Consul does: an exact rule wins, else the longest
//! matching prefix, else deny (`default_policy = "deny"`); `write` grants `list` and `read`,
//! `list` grants `read`. Answers Consul's 403 texts: `ACL not found` for an unknown secret,
//! `Permission denied: token with AccessorID '<id>' lacks permission '<res>:<level>' on "<name>"`.

use std::{collections::BTreeMap, fmt, path::Path, sync::Arc};

use serde::Deserialize;
use serde_json::Value;

/// A 403: Consul's text (`ACL not found`, `Permission denied: …`). A leaf type, so that this
/// module imports nothing of the crate; `reply` turns it into its `ApiError`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The plain-text body.
    pub message: String,
}

/// The anonymous token's AccessorID (Consul's fixed one).
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// A rule's resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resource {
    /// KV keys.
    Key,
    /// Sessions, by node name.
    Session,
    /// Services, by service name.
    Service,
    /// Catalog nodes, by node name.
    Node,
    /// Agent endpoints, by the agent's node name.
    Agent,
}

impl Resource {
    /// Consul's name for it (`key`, `session`, ...).
    fn as_str(self) -> &'static str {
        match self {
            Resource::Key => "key",
            Resource::Session => "session",
            Resource::Service => "service",
            Resource::Node => "node",
            Resource::Agent => "agent",
        }
    }

    /// The resource a rule block names (`key`, `key_prefix`, ...): `(resource, is_prefix)`.
    fn from_block(block: &str) -> Option<(Resource, bool)> {
        let (name, prefix) = match block.strip_suffix("_prefix") {
            Some(name) => (name, true),
            None => (block, false),
        };
        let resource = match name {
            "key" => Resource::Key,
            "session" => Resource::Session,
            "service" => Resource::Service,
            "node" => Resource::Node,
            "agent" => Resource::Agent,
            _ => return None,
        };
        Some((resource, prefix))
    }
}

/// A permission asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Read.
    Read,
    /// List (keys only, with `acl.enable_key_list_policy`).
    #[allow(dead_code)] // the emulated agent runs with enable_key_list_policy = false
    List,
    /// Write.
    Write,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Read => "read",
            Level::List => "list",
            Level::Write => "write",
        })
    }
}

/// A rule's disposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Deny,
    Read,
    List,
    Write,
}

impl Policy {
    fn parse(s: &str) -> Result<Policy, String> {
        match s {
            "deny" => Ok(Policy::Deny),
            "read" => Ok(Policy::Read),
            "list" => Ok(Policy::List),
            "write" => Ok(Policy::Write),
            other => Err(format!("invalid policy {other:?}: use read, write, list or deny")),
        }
    }

    /// Consul's `enforce`: write grants everything, list grants list and read, read grants read.
    fn grants(self, level: Level) -> bool {
        match self {
            Policy::Write => true,
            Policy::List => level != Level::Write,
            Policy::Read => level == Level::Read,
            Policy::Deny => false,
        }
    }
}

/// One token's rules.
#[derive(Clone, Debug, Default)]
struct Rules {
    /// Exact rules by `(resource, name)`.
    exact: BTreeMap<(Resource, String), Policy>,
    /// Prefix rules by `(resource, prefix)`.
    prefix: BTreeMap<(Resource, String), Policy>,
}

impl Rules {
    /// Parses Consul's JSON rule form (an object, or a string holding one).
    fn parse(value: &Value) -> Result<Rules, String> {
        let owned;
        let value = match value {
            Value::String(s) => {
                owned = serde_json::from_str::<Value>(s).map_err(|e| format!("Rules is not JSON: {e}"))?;
                &owned
            }
            v => v,
        };
        let mut rules = Rules::default();
        let Value::Object(blocks) = value else {
            return Err("Rules must be an object".into());
        };
        for (block, entries) in blocks {
            let (resource, is_prefix) =
                Resource::from_block(block).ok_or_else(|| format!("unsupported rule block {block:?}"))?;
            let Value::Object(entries) = entries else {
                return Err(format!("{block} must map names to {{\"policy\": ...}}"));
            };
            for (name, body) in entries {
                let policy = body
                    .get("policy")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{block} {name:?} has no \"policy\""))?;
                let policy = Policy::parse(policy)?;
                if policy == Policy::List && resource != Resource::Key {
                    return Err(format!("{block} {name:?}: list applies to key_prefix only"));
                }
                let map = if is_prefix {
                    &mut rules.prefix
                } else {
                    &mut rules.exact
                };
                map.insert((resource, name.clone()), policy);
            }
        }
        Ok(rules)
    }

    /// The rule that governs `name`: exact, else the longest prefix.
    fn policy(&self, resource: Resource, name: &str) -> Option<Policy> {
        if let Some(p) = self.exact.get(&(resource, name.to_string())) {
            return Some(*p);
        }
        self.prefix
            .iter()
            .filter(|((r, prefix), _)| *r == resource && name.starts_with(prefix.as_str()))
            .max_by_key(|((_, prefix), _)| prefix.len())
            .map(|(_, p)| *p)
    }

    /// Consul's `KeyWritePrefix`: write on `prefix` and no rule under it that withholds write.
    fn write_prefix(&self, prefix: &str) -> bool {
        if !self
            .policy(Resource::Key, prefix)
            .is_some_and(|p| p.grants(Level::Write))
        {
            return false;
        }
        self.exact
            .iter()
            .chain(self.prefix.iter())
            .filter(|((r, name), _)| *r == Resource::Key && name.starts_with(prefix))
            .all(|(_, p)| *p == Policy::Write)
    }
}

/// A token from the ACL file.
#[derive(Clone, Debug)]
struct Token {
    /// Public id (in denials).
    accessor_id: String,
    /// The secret clients present.
    secret_id: String,
    /// `global-management`: every permission.
    management: bool,
    /// Its rules.
    rules: Rules,
}

/// The ACL file's shape.
#[derive(Deserialize)]
struct FileWire {
    /// The tokens.
    #[serde(default, rename = "Tokens", alias = "tokens")]
    tokens: Vec<TokenWire>,
    /// The anonymous token's rules (default: none, so everything is denied).
    #[serde(default, rename = "Anonymous", alias = "anonymous")]
    anonymous: Option<Value>,
}

#[derive(Deserialize)]
struct TokenWire {
    #[serde(default, rename = "AccessorID", alias = "accessor_id")]
    accessor_id: Option<String>,
    #[serde(rename = "SecretID", alias = "secret_id")]
    secret_id: String,
    #[serde(default, rename = "Management", alias = "management")]
    management: bool,
    #[serde(default, rename = "Rules", alias = "rules")]
    rules: Option<Value>,
}

/// The enforced ACL system.
#[derive(Clone, Debug)]
pub struct Acl {
    tokens: Vec<Token>,
    anonymous: Rules,
}

impl Acl {
    /// Single-token mode (`--acl-token`): that secret is a management token; nothing else passes.
    pub fn single(secret: &str) -> Acl {
        Acl {
            tokens: vec![Token {
                accessor_id: uuid::Uuid::new_v4().to_string(),
                secret_id: secret.to_string(),
                management: true,
                rules: Rules::default(),
            }],
            anonymous: Rules::default(),
        }
    }

    /// Adds a management token with `secret` (`--acl-token` next to `--acl-config`).
    pub fn with_management(mut self, secret: &str) -> Acl {
        self.tokens.extend(Acl::single(secret).tokens);
        self
    }

    /// Parses an ACL file (JSON: `{"Tokens": [{"AccessorID", "SecretID", "Management",
    /// "Rules"}], "Anonymous": <rules>}`; `Rules` in Consul's JSON rule syntax).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let wire: FileWire = serde_json::from_str(text).map_err(|e| format!("not a valid ACL file: {e}"))?;
        let mut tokens = Vec::new();
        for (i, t) in wire.tokens.into_iter().enumerate() {
            if t.secret_id.is_empty() {
                return Err(format!("token #{i} has an empty SecretID"));
            }
            let rules = match &t.rules {
                Some(r) => Rules::parse(r).map_err(|e| format!("token #{i}: {e}"))?,
                None => Rules::default(),
            };
            tokens.push(Token {
                accessor_id: t.accessor_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                secret_id: t.secret_id,
                management: t.management,
                rules,
            });
        }
        let anonymous = match &wire.anonymous {
            Some(r) => Rules::parse(r).map_err(|e| format!("anonymous: {e}"))?,
            None => Rules::default(),
        };
        Ok(Acl { tokens, anonymous })
    }

    /// Reads and parses an ACL file.
    ///
    /// # Errors
    /// Unreadable or invalid, naming the path.
    pub fn load(path: &Path) -> Result<Acl, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Acl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The authorizer for a presented secret (rule T1 picks it); none → anonymous.
    ///
    /// # Errors
    /// 403 `ACL not found` for an unknown secret.
    pub(crate) fn resolve(self: &Arc<Self>, secret: Option<&str>) -> Result<Authz, Denied> {
        let Some(secret) = secret else {
            return Ok(Authz {
                acl: self.clone(),
                token: None,
            });
        };
        match self.tokens.iter().position(|t| t.secret_id == secret) {
            Some(i) => Ok(Authz {
                acl: self.clone(),
                token: Some(i),
            }),
            None => Err(Denied {
                message: "ACL not found".into(),
            }),
        }
    }
}

/// What one request may do.
#[derive(Clone, Debug)]
pub(crate) struct Authz {
    acl: Arc<Acl>,
    /// Index of the token, `None` for anonymous.
    token: Option<usize>,
}

impl Authz {
    fn token(&self) -> Option<&Token> {
        self.token.map(|i| &self.acl.tokens[i])
    }

    /// Whether `level` on `resource` `name` is granted.
    pub(crate) fn allows(&self, resource: Resource, name: &str, level: Level) -> bool {
        match self.token() {
            Some(t) if t.management => true,
            Some(t) => t.rules.policy(resource, name).is_some_and(|p| p.grants(level)),
            None => self
                .acl
                .anonymous
                .policy(resource, name)
                .is_some_and(|p| p.grants(level)),
        }
    }

    /// Consul's `KeyWritePrefix` (recursive deletes).
    pub(crate) fn allows_write_prefix(&self, prefix: &str) -> bool {
        match self.token() {
            Some(t) if t.management => true,
            Some(t) => t.rules.write_prefix(prefix),
            None => self.acl.anonymous.write_prefix(prefix),
        }
    }

    /// Consul's denial text for `level` on `resource` `name`.
    pub(crate) fn denied(&self, resource: Resource, name: &str, level: Level) -> Denied {
        let who = match self.token() {
            Some(t) => format!("token with AccessorID '{}'", t.accessor_id),
            None => "anonymous token".to_string(),
        };
        let mut message = format!(
            "Permission denied: {who} lacks permission '{}:{level}' on {name:?}",
            resource.as_str()
        );
        if self.token.is_none() {
            message.push_str(
                ". The anonymous token is used implicitly when a request does not specify a token.",
            );
        }
        Denied { message }
    }

    /// `Ok` when granted, else Consul's 403.
    pub(crate) fn require(&self, resource: Resource, name: &str, level: Level) -> Result<(), Denied> {
        if self.allows(resource, name, level) {
            Ok(())
        } else {
            Err(self.denied(resource, name, level))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(rules: &str) -> Arc<Acl> {
        let file = format!(
            r#"{{"Tokens": [{{"AccessorID": "acc-1", "SecretID": "s1", "Rules": {rules}}},
                            {{"SecretID": "root", "Management": true}}]}}"#
        );
        Arc::new(Acl::parse(&file).unwrap())
    }

    /// Exact beats prefix, the longest prefix wins, no rule denies; write ⊃ list ⊃ read.
    #[test]
    fn rule_resolution() {
        let acl = acl(
            r#"{"key_prefix": {"": {"policy": "read"}, "app/": {"policy": "write"}, "app/secret/": {"policy": "deny"}},
                "key": {"app/secret/open": {"policy": "read"}},
                "session_prefix": {"": {"policy": "write"}}}"#,
        );
        let a = acl.resolve(Some("s1")).unwrap();
        assert!(a.allows(Resource::Key, "other", Level::Read));
        assert!(!a.allows(Resource::Key, "other", Level::Write));
        assert!(a.allows(Resource::Key, "app/x", Level::Write));
        assert!(a.allows(Resource::Key, "app/x", Level::List));
        assert!(!a.allows(Resource::Key, "app/secret/x", Level::Read));
        assert!(a.allows(Resource::Key, "app/secret/open", Level::Read));
        assert!(!a.allows(Resource::Key, "app/secret/open", Level::Write));
        assert!(a.allows(Resource::Session, "any-node", Level::Write));
        assert!(!a.allows(Resource::Service, "web", Level::Read), "no rule: deny");
        assert!(!a.allows_write_prefix("app/"), "a deny under the prefix");
        assert!(a.allows_write_prefix("app/x"));
        let root = acl.resolve(Some("root")).unwrap();
        assert!(root.allows(Resource::Agent, "n", Level::Write));
        assert!(root.allows_write_prefix(""));
    }

    /// Consul's texts: unknown secret, a named token's denial, the anonymous token's denial.
    #[test]
    fn denial_texts() {
        let acl = acl(r#"{}"#);
        let err = acl.resolve(Some("nope")).unwrap_err();
        assert_eq!(err.message, "ACL not found");
        let a = acl.resolve(Some("s1")).unwrap();
        let err = a.require(Resource::Key, "service/x", Level::Write).unwrap_err();
        assert_eq!(
            err.message,
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'key:write' on \"service/x\""
        );
        let anon = acl.resolve(None).unwrap();
        let err = anon.require(Resource::Node, "n1", Level::Read).unwrap_err();
        assert!(err.message.starts_with(
            "Permission denied: anonymous token lacks permission 'node:read' on \"n1\". The anonymous token"
        ));
    }

    /// Bad files are refused with a reason; Rules may be a JSON string, as Consul's API sends it.
    #[test]
    fn file_parsing() {
        assert!(Acl::parse("{").is_err());
        assert!(Acl::parse(r#"{"Tokens": [{"SecretID": "a", "Rules": {"bogus": {}}}]}"#).is_err());
        assert!(
            Acl::parse(r#"{"Tokens": [{"SecretID": "a", "Rules": {"key": {"k": {"policy": "own"}}}}]}"#)
                .is_err()
        );
        assert!(Acl::parse(
            r#"{"Tokens": [{"SecretID": "a", "Rules": {"service": {"k": {"policy": "list"}}}}]}"#
        )
        .is_err());
        let acl = Arc::new(
            Acl::parse(r#"{"Tokens": [{"SecretID": "a", "Rules": "{\"service\": {\"web\": {\"policy\": \"read\"}}}"}]}"#)
                .unwrap(),
        );
        assert!(acl
            .resolve(Some("a"))
            .unwrap()
            .allows(Resource::Service, "web", Level::Read));
    }
}
