//! Who may do what over HTTP: bearer tokens with scopes, from `--auth FILE`
//! (and `--token`, an admin token).
//!
//! ```toml
//! [[token]]
//! name = "orders-app"          # shown in 403s and logs; the token never is
//! sha256 = "9f2c…"             # SHA-256 of the token, hex (`weir token new` prints both)
//! read = true                  # console, /metrics, topic listing, the pipeline's figures
//! produce = ["orders", "orders.*"]
//! consume = [{ topics = ["payments"], groups = ["orders-app"] }]
//! # admin = true               # everything, including creating and deleting topics
//! ```
//!
//! Patterns are topic or group names where `*` stands for any run of
//! characters. Every request is authorised before its handler runs, from
//! its method and path alone ([`required`]): a missing or unknown token is
//! 401, a token without the scope 403, and either changes nothing. Tokens
//! are compared by their hashes, every stored hash each time, in constant time.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: /health and the console's files (they hold no data).
    Nothing,
    /// `read`.
    Read,
    /// `admin`.
    Admin,
    /// `produce` on the topic.
    Produce(String),
    /// `consume` on the topic and group.
    Consume(String, String),
    /// Reading a topic's messages without a group (the console's browser):
    /// `consume` on the topic, for any group.
    Browse(String),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Nothing => write!(f, "nothing"),
            Need::Read => write!(f, "`read`"),
            Need::Admin => write!(f, "`admin`"),
            Need::Produce(t) => write!(f, "`produce` on topic `{t}`"),
            Need::Consume(t, g) => write!(f, "`consume` on topic `{t}` as group `{g}`"),
            Need::Browse(t) => write!(f, "`consume` on topic `{t}`"),
        }
    }
}

/// What the request with `method` on `path` needs; `Err` for a path whose
/// topic or group is percent-encoded (names never need it, and the check
/// must see the name the handler will).
pub(crate) fn required(method: &str, path: &str) -> Result<Need, String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| s.contains('%')) {
        return Err("topic and group names never need percent-encoding".into());
    }
    let read = matches!(method, "GET" | "HEAD");
    let name = |s: &&str| s.to_string();
    Ok(match segments.as_slice() {
        [] | ["console", ..] | ["health"] if read => Need::Nothing,
        ["metrics"] | ["v1", "pipeline", ..] if read => Need::Read,
        ["v1", "topics"] | ["v1", "topics", _] if read => Need::Read,
        ["v1", "topics", t, "messages"] | ["v1", "topics", t, "dead-letters"] if read => Need::Browse(name(t)),
        ["v1", "topics", t, "messages"] if method == "POST" => Need::Produce(name(t)),
        ["v1", "topics", t, "groups", g, _] => Need::Consume(name(t), name(g)),
        // Creating and deleting topics, and whatever else: admin.
        _ => Need::Admin,
    })
}

/// A name pattern: `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(String);

impl Pattern {
    fn parse(s: &str) -> anyhow::Result<Pattern> {
        ensure!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b)),
            "pattern {s:?}: use letters, digits, `.`, `_`, `-` and `*`"
        );
        Ok(Pattern(s.to_owned()))
    }

    fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = name.strip_prefix(first) else { return false };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
        for part in middle {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

fn any(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// One token's grants.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) name: String,
    sha256: [u8; 32],
    admin: bool,
    read: bool,
    produce: Vec<Pattern>,
    consume: Vec<(Vec<Pattern>, Vec<Pattern>)>,
}

impl Token {
    /// `--token`: an admin token given in clear.
    pub(crate) fn admin(name: &str, secret: &str) -> Token {
        Token { name: name.into(), sha256: sha256(secret), admin: true, read: true, produce: Vec::new(), consume: Vec::new() }
    }

    pub(crate) fn allows(&self, need: &Need) -> bool {
        self.admin
            || match need {
                Need::Nothing => true,
                Need::Read => self.read,
                Need::Admin => false,
                Need::Produce(t) => any(&self.produce, t),
                Need::Consume(t, g) => self.consume.iter().any(|(topics, groups)| any(topics, t) && any(groups, g)),
                Need::Browse(t) => self.consume.iter().any(|(topics, _)| any(topics, t)),
            }
    }
}

/// The token whose hash is `secret`'s, looking at every one (no early
/// exit, each comparison in constant time): how long it takes says
/// nothing about which bytes matched.
pub(crate) fn find<'a>(tokens: &'a [Token], secret: &str) -> Option<&'a Token> {
    let given = sha256(secret);
    let mut found = None;
    for t in tokens {
        let diff = t.sha256.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(t);
        }
    }
    found
}

pub(crate) fn sha256(secret: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    read: bool,
    #[serde(default)]
    produce: Vec<String>,
    #[serde(default)]
    consume: Vec<RawConsume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsume {
    topics: Vec<String>,
    groups: Vec<String>,
}

/// The tokens of an `--auth` file.
pub(crate) fn load(path: &Path) -> anyhow::Result<Vec<Token>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--auth {}", path.display()))?;
    parse(&text).with_context(|| format!("--auth {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<Vec<Token>> {
    let raw: RawFile = toml::from_str(text)?;
    ensure!(!raw.token.is_empty(), "no [[token]]: every request would be refused");
    let mut tokens: Vec<Token> = Vec::new();
    for t in raw.token {
        let what = format!("token `{}`", t.name);
        ensure!(!t.name.is_empty(), "a token without a name");
        let digest = t.sha256.to_ascii_lowercase();
        ensure!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{what}: sha256 must be 64 hex digits (the token's SHA-256; `weir token new` prints it)"
        );
        let mut sha = [0u8; 32];
        for (i, byte) in sha.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        if tokens.iter().any(|o| o.name == t.name || o.sha256 == sha) {
            bail!("{what}: two tokens with the same name or the same hash");
        }
        let patterns = |list: &[String]| list.iter().map(|p| Pattern::parse(p)).collect::<anyhow::Result<Vec<_>>>();
        let produce = patterns(&t.produce).with_context(|| format!("{what}: produce"))?;
        let consume = t
            .consume
            .iter()
            .map(|c| {
                ensure!(!c.topics.is_empty() && !c.groups.is_empty(), "each consume entry names topics and groups");
                Ok((patterns(&c.topics)?, patterns(&c.groups)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{what}: consume"))?;
        ensure!(t.admin || t.read || !produce.is_empty() || !consume.is_empty(), "{what} grants nothing");
        tokens.push(Token { name: t.name, sha256: sha, admin: t.admin, read: t.read, produce, consume });
    }
    Ok(tokens)
}

/// A new random token (`weir_` and 48 hex digits: 192 bits).
pub(crate) fn new_secret() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
    Ok(format!("weir_{}", hex(&bytes)))
}

/// `weir token`.
#[derive(clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// A new random token: its `[[token]]` entry (with `read`; edit the
    /// scopes) on standard output, to append to the --auth file, and the
    /// token itself, shown once and stored nowhere, on standard error.
    New {
        /// The token's name, shown in refusals and logs.
        #[arg(long, default_value = "client")]
        name: String,
    },
    /// The `sha256 = ...` line for a token read from standard input.
    Hash,
}

pub(crate) fn token_command(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New { name } => {
            ensure!(!name.is_empty() && !name.contains(['"', '\\', '\n']), "--name: a name without quotes, backslashes or newlines");
            let secret = new_secret()?;
            println!("[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nread = true", hex(&sha256(&secret)));
            eprintln!(
                "weir: token `{name}` (shown once, stored nowhere; clients send it as a bearer token, weir's commands read WEIR_TOKEN):"
            );
            eprintln!("{secret}");
        }
        TokenCommand::Hash => {
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            let secret = secret.trim_end_matches(['\n', '\r']);
            ensure!(!secret.is_empty(), "no token on standard input");
            println!("sha256 = \"{}\"", hex(&sha256(secret)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_scope() {
        let cases = [
            ("GET", "/health", Need::Nothing),
            ("GET", "/", Need::Nothing),
            ("GET", "/console/app.js", Need::Nothing),
            ("GET", "/metrics", Need::Read),
            ("GET", "/v1/pipeline", Need::Read),
            ("GET", "/v1/topics", Need::Read),
            ("GET", "/v1/topics/orders", Need::Read),
            ("POST", "/v1/topics", Need::Admin),
            ("DELETE", "/v1/topics/orders", Need::Admin),
            ("POST", "/v1/topics/orders/messages", Need::Produce("orders".into())),
            ("GET", "/v1/topics/orders.dlq/messages", Need::Browse("orders.dlq".into())),
            ("GET", "/v1/topics/orders.dlq/dead-letters", Need::Browse("orders.dlq".into())),
            ("POST", "/v1/topics/orders.dlq/dead-letters/redrive", Need::Admin),
            ("POST", "/v1/pipeline/stages/count/upgrade", Need::Admin),
            ("GET", "/v1/topics/orders/groups/billing/messages", Need::Consume("orders".into(), "billing".into())),
            ("POST", "/v1/topics/orders/groups/billing/ack", Need::Consume("orders".into(), "billing".into())),
            ("POST", "/health", Need::Admin),
            ("PUT", "/v1/topics/orders/messages", Need::Admin),
            ("GET", "/v1/anything/else", Need::Admin),
        ];
        for (method, path, need) in cases {
            assert_eq!(required(method, path).unwrap(), need, "{method} {path}");
        }
        assert!(required("POST", "/v1/topics/%6Frders/messages").is_err());
    }

    #[test]
    fn patterns_match_whole_names() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("orders").matches("orders") && !p("orders").matches("orders2") && !p("orders").matches("xorders"));
        assert!(p("orders.*").matches("orders.eu") && !p("orders.*").matches("orders"));
        assert!(p("*").matches("") && p("*").matches("x"));
        assert!(p("a*b*c").matches("abc") && p("a*b*c").matches("axxbyyc") && !p("a*b*c").matches("axxbyy"));
        assert!(p("*.dlq").matches("logs.dlq") && !p("*.dlq").matches("logs.dlqx"));
        assert!(!p("ab*ba").matches("aba") && p("ab*ba").matches("abba"));
        assert!(Pattern::parse("a/b").is_err() && Pattern::parse("").is_err());
    }

    #[test]
    fn tokens_grant_what_the_file_says() {
        let secret = "weir_s3cret";
        let file = format!(
            "[[token]]\nname = \"app\"\nsha256 = \"{}\"\nread = true\nproduce = [\"orders*\"]\n\
             consume = [{{ topics = [\"payments\"], groups = [\"app\", \"app-*\"] }}]\n",
            hex(&sha256(secret))
        );
        let tokens = parse(&file).unwrap();
        let t = find(&tokens, secret).expect("found by its hash");
        assert!(find(&tokens, "weir_s3creT").is_none());
        assert!(t.allows(&Need::Read) && !t.allows(&Need::Admin));
        assert!(t.allows(&Need::Produce("orders.eu".into())) && !t.allows(&Need::Produce("payments".into())));
        assert!(t.allows(&Need::Consume("payments".into(), "app-2".into())));
        assert!(!t.allows(&Need::Consume("payments".into(), "other".into())));
        assert!(!t.allows(&Need::Consume("orders".into(), "app".into())));
        assert!(t.allows(&Need::Browse("payments".into())) && !t.allows(&Need::Browse("orders".into())));
        assert!(Token::admin("token", secret).allows(&Need::Produce("x".into())));
    }

    #[test]
    fn a_bad_file_is_refused_with_the_reason() {
        let h = hex(&sha256("x"));
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("").contains("no [[token]]"));
        assert!(err("[[token]]\nname = \"a\"\nsha256 = \"abc\"\nread = true\n").contains("64 hex digits"));
        assert!(err(&format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n")).contains("grants nothing"));
        assert!(err(&format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nread = true\nwrite = true\n")).contains("unknown field"));
        let twice = format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nread = true\n");
        assert!(err(&format!("{twice}{}", twice.replace("\"a\"", "\"b\""))).contains("same name or the same hash"));
        assert!(err(&format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nproduce = [\"a b\"]\n")).contains("pattern"));
        assert!(new_secret().unwrap().starts_with("weir_") && new_secret().unwrap() != new_secret().unwrap());
    }
}
