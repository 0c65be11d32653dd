//! Strict SPIFFE ID parsing.
//!
//! Implements the syntax rules of the SPIFFE ID standard
//! (`spiffe/spiffe`, `standards/SPIFFE-ID.md`), with the character sets used
//! by the reference implementation (`go-spiffe` v2 `spiffeid` package):
//!
//! * the scheme is exactly `spiffe` (lowercase) followed by `://`;
//! * the trust domain is non-empty, at most 255 bytes, and made only of
//!   lowercase ASCII letters, digits, `.`, `-` and `_` (so no uppercase, no
//!   userinfo, no port or `:` delimiter, no percent-encoding);
//! * the path is either empty or a sequence of `/segment` parts where each
//!   segment is non-empty, is not `.` or `..`, and is made only of ASCII
//!   letters, digits, `.`, `-` and `_`; no trailing slash;
//! * no query and no fragment;
//! * the whole ID is at most 2048 bytes.
//!
//! The parser never normalises: an input is accepted only if it is already in
//! canonical form, so the string form of a parsed [`SpiffeId`] is always
//! byte-for-byte identical to the input. Parsing never panics, whatever the
//! input (including non-ASCII UTF-8).
//!
//! Offsets reported in [`SpiffeIdError`] are byte offsets into the string that
//! was passed to the parse function.

use std::fmt;
use std::str::FromStr;

/// The only accepted scheme, including the authority separator.
const SCHEME_PREFIX: &str = "spiffe://";

/// Maximum length in bytes of a whole SPIFFE ID (SPIFFE-ID.md §2.3).
pub const MAX_ID_LEN: usize = 2048;

/// Maximum length in bytes of a trust domain name (SPIFFE-ID.md §2.3).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest excerpt of offending input quoted in an error message, in chars.
const MAX_EXCERPT_CHARS: usize = 64;

/// Why a string is not a valid SPIFFE ID, trust domain or SPIFFE ID prefix.
///
/// There is one variant per rule. Messages name the problem and quote the
/// offending part of the input (truncated and escaped); offsets are byte
/// offsets into the string given to the parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input is the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,

    /// The input is longer than [`MAX_ID_LEN`] bytes.
    #[error("SPIFFE ID exceeds {max} bytes ({len} bytes)", max = MAX_ID_LEN)]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },

    /// The input has no `scheme:` part at all.
    #[error("SPIFFE ID has no scheme: it must start with 'spiffe://'")]
    MissingScheme,

    /// The scheme is present but is not exactly `spiffe` (case matters).
    #[error("SPIFFE ID scheme must be 'spiffe', found '{}'", .scheme.escape_debug())]
    WrongScheme {
        /// The scheme found in the input (possibly truncated).
        scheme: String,
    },

    /// The scheme is `spiffe:` but is not followed by the `//` authority marker.
    #[error("SPIFFE ID must start with 'spiffe://': missing '//' after 'spiffe:'")]
    MissingAuthority,

    /// The authority (trust domain) is empty, e.g. `spiffe:///path`.
    #[error("SPIFFE ID is missing the trust domain")]
    MissingTrustDomain,

    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error(
        "SPIFFE ID trust domain exceeds {max} bytes ({len} bytes)",
        max = MAX_TRUST_DOMAIN_LEN
    )]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
    },

    /// The authority contains userinfo (`user@host`). The userinfo itself is
    /// deliberately not quoted, since it may hold a credential.
    #[error("SPIFFE ID must not contain userinfo ('@' at offset {offset})")]
    UserInfo {
        /// Byte offset of the `@` separating userinfo from the host.
        offset: usize,
    },

    /// The authority contains a `:` (a port, or an empty port delimiter).
    #[error(
        "SPIFFE ID trust domain must not have a port or ':' delimiter, found '{}' at offset {offset}",
        .port.escape_debug()
    )]
    Port {
        /// The text from the `:` to the end of the authority (possibly truncated).
        port: String,
        /// Byte offset of the `:`.
        offset: usize,
    },

    /// The trust domain or path contains a `%` (percent-encoding is never
    /// allowed, since every allowed character is unreserved).
    #[error(
        "SPIFFE ID must not contain percent-encoding, found '{}' at offset {offset}",
        .encoded.escape_debug()
    )]
    PercentEncoded {
        /// The `%` and up to two following characters.
        encoded: String,
        /// Byte offset of the `%`.
        offset: usize,
    },

    /// The trust domain contains a character outside `[a-z0-9._-]`.
    #[error("SPIFFE ID trust domain contains invalid character {ch:?} at offset {offset}")]
    InvalidTrustDomainChar {
        /// The offending character.
        ch: char,
        /// Byte offset of the character.
        offset: usize,
    },

    /// A path segment contains a character outside `[A-Za-z0-9._-]`.
    #[error("SPIFFE ID path contains invalid character {ch:?} at offset {offset}")]
    InvalidPathChar {
        /// The offending character.
        ch: char,
        /// Byte offset of the character.
        offset: usize,
    },

    /// The path contains an empty segment (`//`).
    #[error("SPIFFE ID path has an empty segment at offset {offset}")]
    EmptySegment {
        /// Byte offset where the empty segment starts (the second `/`).
        offset: usize,
    },

    /// The path contains a `.` or `..` segment.
    #[error("SPIFFE ID path segment '{segment}' is not allowed (at offset {offset})")]
    DotSegment {
        /// The segment: `"."` or `".."`.
        segment: &'static str,
        /// Byte offset of the segment.
        offset: usize,
    },

    /// The path ends with `/` (this includes a path that is just `/`).
    #[error("SPIFFE ID path must not have a trailing slash")]
    TrailingSlash,

    /// The ID has a query component (`?...`), even an empty one.
    #[error(
        "SPIFFE ID must not have a query, found '?{}' at offset {offset}",
        .query.escape_debug()
    )]
    Query {
        /// Text after the `?` (possibly truncated).
        query: String,
        /// Byte offset of the `?`.
        offset: usize,
    },

    /// The ID has a fragment component (`#...`), even an empty one.
    #[error(
        "SPIFFE ID must not have a fragment, found '#{}' at offset {offset}",
        .fragment.escape_debug()
    )]
    Fragment {
        /// Text after the `#` (possibly truncated).
        fragment: String,
        /// Byte offset of the `#`.
        offset: usize,
    },

    /// A trust domain was given in `spiffe://` form but has a path.
    #[error(
        "SPIFFE trust domain must not have a path, found '{}'",
        .path.escape_debug()
    )]
    UnexpectedPath {
        /// The path found (possibly truncated).
        path: String,
    },

    /// A trust domain was asked for as a bare name (command line, config)
    /// and a URI was given, e.g. `spiffe://example.org`.
    #[error("{}", not_a_name_message(.given, .name.as_deref()))]
    NotAName {
        /// What was given (possibly truncated).
        given: String,
        /// The trust domain name it holds, when it is a valid one.
        name: Option<String>,
    },
}

/// The message of [`SpiffeIdError::NotAName`]: the name to give instead
/// when there is one.
fn not_a_name_message(given: &str, name: Option<&str>) -> String {
    let given = given.escape_debug();
    match name {
        Some(name) => {
            format!("trust domain is a name, not a SPIFFE ID: give {name}, not '{given}'")
        }
        None => format!("trust domain is a name like example.org, not a URI: found '{given}'"),
    }
}

impl SpiffeIdError {
    /// A short machine-readable code for the rule that was broken, for
    /// APIs that answer per item (`spiffe_id_<rule>`).
    pub fn code(&self) -> &'static str {
        match self {
            SpiffeIdError::Empty => "spiffe_id_empty",
            SpiffeIdError::TooLong { .. } => "spiffe_id_too_long",
            SpiffeIdError::MissingScheme => "spiffe_id_missing_scheme",
            SpiffeIdError::WrongScheme { .. } => "spiffe_id_wrong_scheme",
            SpiffeIdError::MissingAuthority => "spiffe_id_missing_authority",
            SpiffeIdError::MissingTrustDomain => "spiffe_id_missing_trust_domain",
            SpiffeIdError::TrustDomainTooLong { .. } => "spiffe_id_trust_domain_too_long",
            SpiffeIdError::UserInfo { .. } => "spiffe_id_userinfo",
            SpiffeIdError::Port { .. } => "spiffe_id_port",
            SpiffeIdError::PercentEncoded { .. } => "spiffe_id_percent_encoded",
            SpiffeIdError::InvalidTrustDomainChar { .. } => "spiffe_id_trust_domain_char",
            SpiffeIdError::InvalidPathChar { .. } => "spiffe_id_path_char",
            SpiffeIdError::EmptySegment { .. } => "spiffe_id_empty_segment",
            SpiffeIdError::DotSegment { .. } => "spiffe_id_dot_segment",
            SpiffeIdError::TrailingSlash => "spiffe_id_trailing_slash",
            SpiffeIdError::Query { .. } => "spiffe_id_query",
            SpiffeIdError::Fragment { .. } => "spiffe_id_fragment",
            SpiffeIdError::UnexpectedPath { .. } => "spiffe_id_unexpected_path",
            SpiffeIdError::NotAName { .. } => "spiffe_id_trust_domain_not_a_name",
        }
    }
}

/// A requested SPIFFE ID as a record (an audit line) keeps it: whole when
/// it is no longer than an ID may be, else its first [`MAX_ID_LEN`] bytes
/// (at a character boundary) and `...`, so a refused oversized request
/// cannot make a record of any size.
#[must_use]
pub fn for_record(mut requested: String) -> String {
    if requested.len() > MAX_ID_LEN {
        let mut end = MAX_ID_LEN;
        while !requested.is_char_boundary(end) {
            end -= 1;
        }
        requested.truncate(end);
        requested.push_str("...");
    }
    requested
}

/// Returns at most [`MAX_EXCERPT_CHARS`] characters of `s`, with `...`
/// appended when truncated. Works on char boundaries, so never panics.
fn excerpt(s: &str) -> String {
    let mut chars = s.chars();
    let mut out: String = chars.by_ref().take(MAX_EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// Whether `c` may appear in a trust domain name.
fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

/// Whether `c` may appear in a path segment.
fn is_path_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

/// Builds the error for a `%` found at byte index `i` of `s` (which is known
/// to be a char boundary since `%` is ASCII).
fn percent_error(s: &str, i: usize, base: usize) -> SpiffeIdError {
    SpiffeIdError::PercentEncoded {
        encoded: s.get(i..).unwrap_or("").chars().take(3).collect(),
        offset: base + i,
    }
}

/// Validates a trust domain name (the URI host). `base` is the byte offset of
/// `td` within the caller's input, used for error offsets.
fn validate_trust_domain(td: &str, base: usize) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if let Some(i) = td.rfind('@') {
        return Err(SpiffeIdError::UserInfo { offset: base + i });
    }
    if let Some(i) = td.find(':') {
        return Err(SpiffeIdError::Port {
            port: excerpt(td.get(i..).unwrap_or("")),
            offset: base + i,
        });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    for (i, ch) in td.char_indices() {
        if ch == '%' {
            return Err(percent_error(td, i, base));
        }
        if !is_trust_domain_char(ch) {
            return Err(SpiffeIdError::InvalidTrustDomainChar {
                ch,
                offset: base + i,
            });
        }
    }
    Ok(())
}

/// Validates a non-empty path that starts with `/` and contains neither `?`
/// nor `#`. `base` is the byte offset of `path` within the caller's input.
fn validate_path(path: &str, base: usize) -> Result<(), SpiffeIdError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut offset = base + (path.len() - rest.len());
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        if segment.is_empty() {
            return Err(if is_last {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment { offset }
            });
        }
        for (i, ch) in segment.char_indices() {
            if ch == '%' {
                return Err(percent_error(segment, i, offset));
            }
            if !is_path_char(ch) {
                return Err(SpiffeIdError::InvalidPathChar {
                    ch,
                    offset: offset + i,
                });
            }
        }
        match segment {
            "." => {
                return Err(SpiffeIdError::DotSegment {
                    segment: ".",
                    offset,
                });
            }
            ".." => {
                return Err(SpiffeIdError::DotSegment {
                    segment: "..",
                    offset,
                });
            }
            _ => {}
        }
        offset += segment.len() + 1;
    }
    Ok(())
}

/// Strips and checks the `spiffe://` prefix, returning the remainder.
fn strip_scheme(s: &str) -> Result<&str, SpiffeIdError> {
    if let Some(rest) = s.strip_prefix(SCHEME_PREFIX) {
        return Ok(rest);
    }
    if s.starts_with("spiffe:") {
        return Err(SpiffeIdError::MissingAuthority);
    }
    match s.find(':') {
        Some(i) => Err(SpiffeIdError::WrongScheme {
            scheme: excerpt(s.get(..i).unwrap_or("")),
        }),
        None => Err(SpiffeIdError::MissingScheme),
    }
}

/// Fully validates `s` as a SPIFFE ID and returns the byte length of its
/// trust domain (which starts right after `spiffe://`).
fn validate_id(s: &str) -> Result<usize, SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(SpiffeIdError::TooLong { len: s.len() });
    }
    let rest = strip_scheme(s)?;
    let base = SCHEME_PREFIX.len();

    // The authority ends at the first '/', '?' or '#' (RFC 3986 §3.2).
    let td_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (td, after_td) = rest.split_at(td_len);
    validate_trust_domain(td, base)?;

    // The path ends at the first '?' or '#'; neither component is allowed.
    let path_base = base + td_len;
    if let Some(i) = after_td.find(['?', '#']) {
        let tail = after_td.get(i + 1..).unwrap_or("");
        return Err(if after_td.as_bytes()[i] == b'?' {
            SpiffeIdError::Query {
                query: excerpt(tail),
                offset: path_base + i,
            }
        } else {
            SpiffeIdError::Fragment {
                fragment: excerpt(tail),
                offset: path_base + i,
            }
        });
    }

    if !after_td.is_empty() {
        validate_path(after_td, path_base)?;
    }
    Ok(td_len)
}

/// A SPIFFE trust domain name, e.g. `example.org`.
///
/// Always valid: non-empty, at most 255 bytes, only `[a-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain given either as a bare name (`example.org`) or as
    /// the SPIFFE ID of the trust domain (`spiffe://example.org`). Input
    /// containing `://` is treated as the ID form, and must then have no path.
    ///
    /// No normalisation is done: `Example.org` is rejected, not lowercased.
    /// For a trust domain an operator gives (command line, config) use
    /// [`TrustDomain::parse_name`], which refuses the ID form rather than
    /// read it silently.
    ///
    /// # Errors
    ///
    /// Returns the [`SpiffeIdError`] for the first rule the input breaks.
    pub fn parse(s: &str) -> Result<TrustDomain, SpiffeIdError> {
        if s.contains("://") {
            let id = SpiffeId::parse(s)?;
            if !id.path.is_empty() {
                return Err(SpiffeIdError::UnexpectedPath {
                    path: excerpt(&id.path),
                });
            }
            return Ok(id.trust_domain);
        }
        validate_trust_domain(s, 0)?;
        Ok(TrustDomain(s.to_owned()))
    }

    /// Parses a trust domain an operator gives by name (`example.org`).
    /// A URI is refused rather than read as the name in it: whoever writes
    /// `spiffe://example.org/ns/x` may well mean something else than the
    /// trust domain `example.org`, so the error names the bare name to give
    /// instead (when the URI holds a valid one).
    ///
    /// # Errors
    ///
    /// [`SpiffeIdError::NotAName`] for a URI, else the [`SpiffeIdError`]
    /// for the first rule the name breaks.
    pub fn parse_name(s: &str) -> Result<TrustDomain, SpiffeIdError> {
        if s.contains("://") || s.starts_with("spiffe:") {
            let name = s
                .strip_prefix(SCHEME_PREFIX)
                .and_then(|rest| rest.split(['/', '?', '#']).next())
                .filter(|authority| validate_trust_domain(authority, 0).is_ok())
                .map(str::to_owned);
            return Err(SpiffeIdError::NotAName {
                given: excerpt(s),
                name,
            });
        }
        validate_trust_domain(s, 0)?;
        Ok(TrustDomain(s.to_owned()))
    }

    /// The trust domain name, e.g. `example.org`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID string of the trust domain, e.g. `spiffe://example.org`.
    #[must_use]
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// The SPIFFE ID of the trust domain itself (empty path).
    #[must_use]
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            full: self.id_string(),
            trust_domain: self.clone(),
            path: String::new(),
        }
    }
}

impl fmt::Display for TrustDomain {
    /// Writes the bare trust domain name, e.g. `example.org`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    /// Same as [`TrustDomain::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::parse(s)
    }
}

/// A validated SPIFFE ID, e.g. `spiffe://example.org/ns/prod/sa/web`.
///
/// Always in canonical form; [`SpiffeId::as_str`] and `Display` return exactly
/// the string that was parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg(/seg)*`.
    path: String,
    /// The canonical string, `spiffe://` + trust domain + path.
    full: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, enforcing every rule of the SPIFFE ID standard
    /// (see the module documentation). Never panics.
    ///
    /// # Errors
    ///
    /// Returns the [`SpiffeIdError`] for the first rule the input breaks.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        let td_len = validate_id(s)?;
        let after_scheme = &s[SCHEME_PREFIX.len()..];
        let (td, path) = after_scheme.split_at(td_len);
        Ok(SpiffeId {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
            full: s.to_owned(),
        })
    }

    /// The trust domain of this ID.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty for a trust domain ID, otherwise `/seg(/seg)*`.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The canonical string form, e.g. `spiffe://example.org/web`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Whether this ID belongs to trust domain `td`.
    #[must_use]
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain == *td
    }

    /// Whether `prefix` is a segment-wise prefix of this ID: same trust
    /// domain, and `prefix`'s path segments are the leading segments of this
    /// ID's path. An ID is a prefix of itself, and the trust domain ID
    /// (`spiffe://td`) is a prefix of every ID in `td`; `spiffe://td/ns` is a
    /// prefix of `spiffe://td/ns/a` but not of `spiffe://td/nsx`.
    #[must_use]
    pub fn has_prefix(&self, prefix: &SpiffeId) -> bool {
        if self.trust_domain != prefix.trust_domain {
            return false;
        }
        match self.path.strip_prefix(prefix.path.as_str()) {
            Some(rest) => rest.is_empty() || prefix.path.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Like [`SpiffeId::has_prefix`], parsing `prefix` first.
    ///
    /// # Errors
    ///
    /// Returns the [`SpiffeIdError`] for the first rule the input breaks.
    pub fn has_prefix_str(&self, prefix: &str) -> Result<bool, SpiffeIdError> {
        Ok(self.has_prefix(&SpiffeId::parse(prefix)?))
    }
}

impl fmt::Display for SpiffeId {
    /// Writes the canonical string, e.g. `spiffe://example.org/web`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    /// Same as [`SpiffeId::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    /// Same as [`SpiffeId::as_str`].
    fn as_ref(&self) -> &str {
        &self.full
    }
}

/// A SPIFFE ID used as a prefix in an allow-list: it matches every ID whose
/// path starts with its path segments, in the same trust domain.
/// `spiffe://td` matches everything in `td`; `spiffe://td/ns` matches
/// `spiffe://td/ns` and `spiffe://td/ns/a/b` but not `spiffe://td/nsx`.
///
/// The syntax is exactly that of a SPIFFE ID (no wildcards, no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeIdPrefix(SpiffeId);

impl SpiffeIdPrefix {
    /// Parses a prefix; it must be a valid SPIFFE ID.
    ///
    /// # Errors
    ///
    /// Returns the [`SpiffeIdError`] for the first rule the input breaks.
    pub fn parse(s: &str) -> Result<SpiffeIdPrefix, SpiffeIdError> {
        SpiffeId::parse(s).map(SpiffeIdPrefix)
    }

    /// Whether `id` falls under this prefix (see [`SpiffeId::has_prefix`]).
    #[must_use]
    pub fn matches(&self, id: &SpiffeId) -> bool {
        id.has_prefix(&self.0)
    }

    /// The prefix as a SPIFFE ID.
    #[must_use]
    pub fn as_id(&self) -> &SpiffeId {
        &self.0
    }

    /// The canonical string form of the prefix.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<SpiffeId> for SpiffeIdPrefix {
    /// Uses an ID as a prefix.
    fn from(id: SpiffeId) -> Self {
        SpiffeIdPrefix(id)
    }
}

impl From<TrustDomain> for SpiffeIdPrefix {
    /// The prefix matching every ID in the trust domain.
    fn from(td: TrustDomain) -> Self {
        SpiffeIdPrefix(td.id())
    }
}

impl fmt::Display for SpiffeIdPrefix {
    /// Writes the canonical string of the prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for SpiffeIdPrefix {
    type Err = SpiffeIdError;

    /// Same as [`SpiffeIdPrefix::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeIdPrefix::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn valid_ids() {
        let cases: &[(&str, &str, &str)] = &[
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/workload", "example.org", "/workload"),
            (
                "spiffe://k8s-west.example.com/ns/staging/sa/default",
                "k8s-west.example.com",
                "/ns/staging/sa/default",
            ),
            (
                "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
                "example.com",
                "/9eebccd2-12bf-40a6-b262-65fe0487d453",
            ),
            ("spiffe://td_1/A.b-C_d", "td_1", "/A.b-C_d"),
            ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
            ("spiffe://td/...", "td", "/..."),
            ("spiffe://td/.a/..b/a./b..", "td", "/.a/..b/a./b.."),
            ("spiffe://td/UPPER/Case", "td", "/UPPER/Case"),
        ];
        for &(s, td, path) in cases {
            let parsed = id(s);
            assert_eq!(parsed.trust_domain().name(), td, "{s}");
            assert_eq!(parsed.path(), path, "{s}");
            assert_eq!(parsed.as_str(), s);
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parsed.as_ref(), s);
            assert_eq!(s.parse::<SpiffeId>().unwrap(), parsed);
            let displayed = parsed.to_string();
            assert_eq!(SpiffeId::parse(&displayed).unwrap(), parsed);
        }
    }

    #[test]
    fn invalid_ids() {
        let long_td = "a".repeat(256);
        let max_td = "a".repeat(255);
        let too_long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN - 11));
        let cases: Vec<(String, SpiffeIdError)> = vec![
            ("".into(), E::Empty),
            (
                too_long.clone(),
                E::TooLong {
                    len: too_long.len(),
                },
            ),
            ("example.org".into(), E::MissingScheme),
            (
                "SPIFFE://example.org".into(),
                E::WrongScheme {
                    scheme: "SPIFFE".into(),
                },
            ),
            (
                "Spiffe://example.org".into(),
                E::WrongScheme {
                    scheme: "Spiffe".into(),
                },
            ),
            (
                "https://example.org".into(),
                E::WrongScheme {
                    scheme: "https".into(),
                },
            ),
            (
                " spiffe://example.org".into(),
                E::WrongScheme {
                    scheme: " spiffe".into(),
                },
            ),
            ("spiffe:example.org".into(), E::MissingAuthority),
            ("spiffe:/example.org".into(), E::MissingAuthority),
            ("spiffe://".into(), E::MissingTrustDomain),
            ("spiffe:///path".into(), E::MissingTrustDomain),
            ("spiffe://?q".into(), E::MissingTrustDomain),
            (
                format!("spiffe://{long_td}"),
                E::TrustDomainTooLong { len: 256 },
            ),
            (
                "spiffe://Example.org".into(),
                E::InvalidTrustDomainChar { ch: 'E', offset: 9 },
            ),
            (
                "spiffe://example.ORG/x".into(),
                E::InvalidTrustDomainChar {
                    ch: 'O',
                    offset: 17,
                },
            ),
            (
                "spiffe://example.org:8080".into(),
                E::Port {
                    port: ":8080".into(),
                    offset: 20,
                },
            ),
            (
                "spiffe://example.org:".into(),
                E::Port {
                    port: ":".into(),
                    offset: 20,
                },
            ),
            (
                "spiffe://[::1]/x".into(),
                E::Port {
                    port: "::1]".into(),
                    offset: 10,
                },
            ),
            (
                "spiffe://user@example.org".into(),
                E::UserInfo { offset: 13 },
            ),
            (
                "spiffe://user:pw@example.org".into(),
                E::UserInfo { offset: 16 },
            ),
            (
                "spiffe://ex%61mple.org".into(),
                E::PercentEncoded {
                    encoded: "%61".into(),
                    offset: 11,
                },
            ),
            (
                "spiffe://td/a%2Fb".into(),
                E::PercentEncoded {
                    encoded: "%2F".into(),
                    offset: 13,
                },
            ),
            (
                "spiffe://td/a%".into(),
                E::PercentEncoded {
                    encoded: "%".into(),
                    offset: 13,
                },
            ),
            (
                "spiffe://td/a/../b".into(),
                E::DotSegment {
                    segment: "..",
                    offset: 14,
                },
            ),
            (
                "spiffe://td/..".into(),
                E::DotSegment {
                    segment: "..",
                    offset: 12,
                },
            ),
            (
                "spiffe://td/./b".into(),
                E::DotSegment {
                    segment: ".",
                    offset: 12,
                },
            ),
            (
                "spiffe://td/a/.".into(),
                E::DotSegment {
                    segment: ".",
                    offset: 14,
                },
            ),
            ("spiffe://td//a".into(), E::EmptySegment { offset: 12 }),
            ("spiffe://td/a//b".into(), E::EmptySegment { offset: 14 }),
            ("spiffe://td//".into(), E::EmptySegment { offset: 12 }),
            ("spiffe://td/".into(), E::TrailingSlash),
            ("spiffe://td/a/".into(), E::TrailingSlash),
            (
                "spiffe://td/a?x=1".into(),
                E::Query {
                    query: "x=1".into(),
                    offset: 13,
                },
            ),
            (
                "spiffe://td?".into(),
                E::Query {
                    query: "".into(),
                    offset: 11,
                },
            ),
            (
                "spiffe://td/a#frag".into(),
                E::Fragment {
                    fragment: "frag".into(),
                    offset: 13,
                },
            ),
            (
                "spiffe://td#".into(),
                E::Fragment {
                    fragment: "".into(),
                    offset: 11,
                },
            ),
            (
                "spiffe://td/a#f?q".into(),
                E::Fragment {
                    fragment: "f?q".into(),
                    offset: 13,
                },
            ),
            (
                "spiffe://exämple.org".into(),
                E::InvalidTrustDomainChar {
                    ch: 'ä',
                    offset: 11,
                },
            ),
            (
                "spiffe://td/wörk".into(),
                E::InvalidPathChar {
                    ch: 'ö',
                    offset: 13,
                },
            ),
            (
                "spiffe://td/😀".into(),
                E::InvalidPathChar {
                    ch: '😀',
                    offset: 12,
                },
            ),
            (
                "spiffe://td/a b".into(),
                E::InvalidPathChar {
                    ch: ' ',
                    offset: 13,
                },
            ),
            (
                "spiffe://td/a\n".into(),
                E::InvalidPathChar {
                    ch: '\n',
                    offset: 13,
                },
            ),
            (
                "spiffe://t d".into(),
                E::InvalidTrustDomainChar {
                    ch: ' ',
                    offset: 10,
                },
            ),
            (
                "spiffe://td/a~b".into(),
                E::InvalidPathChar {
                    ch: '~',
                    offset: 13,
                },
            ),
            (
                "spiffe://td/a:b".into(),
                E::InvalidPathChar {
                    ch: ':',
                    offset: 13,
                },
            ),
            (
                "spiffe://td\\x".into(),
                E::InvalidTrustDomainChar {
                    ch: '\\',
                    offset: 11,
                },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(&s), Err(want.clone()), "input {s:?}");
            assert_eq!(SpiffeIdPrefix::parse(&s), Err(want), "input {s:?}");
        }

        // Boundaries that are still valid.
        id(&format!("spiffe://{max_td}"));
        let max_id = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN - 12));
        assert_eq!(max_id.len(), MAX_ID_LEN);
        id(&max_id);
    }

    #[test]
    fn error_messages() {
        let msg = |s: &str| SpiffeId::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("spiffe://Abc"),
            "SPIFFE ID trust domain contains invalid character 'A' at offset 9"
        );
        assert_eq!(
            msg("spiffe://td/a//b"),
            "SPIFFE ID path has an empty segment at offset 14"
        );
        assert_eq!(
            msg("spiffe://td/a?x"),
            "SPIFFE ID must not have a query, found '?x' at offset 13"
        );
        assert_eq!(
            msg("spiffe://td/a/.."),
            "SPIFFE ID path segment '..' is not allowed (at offset 14)"
        );
        assert_eq!(
            msg(&format!("spiffe://td/{}", "a".repeat(3000))),
            "SPIFFE ID exceeds 2048 bytes (3012 bytes)"
        );
        assert_eq!(
            msg("HTTP://td"),
            "SPIFFE ID scheme must be 'spiffe', found 'HTTP'"
        );
        assert_eq!(msg("spiffe:///a"), "SPIFFE ID is missing the trust domain");
        assert_eq!(
            msg("spiffe://td/a/"),
            "SPIFFE ID path must not have a trailing slash"
        );
        assert_eq!(
            msg("spiffe://user:secret@td"),
            "SPIFFE ID must not contain userinfo ('@' at offset 20)"
        );
        assert!(!msg("spiffe://user:secret@td").contains("secret"));
        // Control characters are escaped, long parts truncated.
        assert_eq!(
            msg("spiffe://td/\u{1}"),
            "SPIFFE ID path contains invalid character '\\u{1}' at offset 12"
        );
        let long_scheme = format!("{}://td", "x".repeat(500));
        assert!(msg(&long_scheme).len() < 150);
        assert_eq!(
            msg("a\"b\n://td"),
            "SPIFFE ID scheme must be 'spiffe', found 'a\\\"b\\n'"
        );
    }

    #[test]
    fn trust_domain_parse() {
        for s in ["example.org", "spiffe://example.org"] {
            let td = TrustDomain::parse(s).unwrap();
            assert_eq!(td.name(), "example.org");
            assert_eq!(td.to_string(), "example.org");
            assert_eq!(td.id_string(), "spiffe://example.org");
            assert_eq!(td.id().as_str(), "spiffe://example.org");
            assert_eq!(td.id(), id("spiffe://example.org"));
            assert_eq!(s.parse::<TrustDomain>().unwrap(), td);
        }
        let bad: Vec<(&str, SpiffeIdError)> = vec![
            ("", E::MissingTrustDomain),
            (
                "Example.org",
                E::InvalidTrustDomainChar { ch: 'E', offset: 0 },
            ),
            (
                "example.org:443",
                E::Port {
                    port: ":443".into(),
                    offset: 11,
                },
            ),
            ("u@example.org", E::UserInfo { offset: 1 }),
            (
                "ex%41mple",
                E::PercentEncoded {
                    encoded: "%41".into(),
                    offset: 2,
                },
            ),
            (
                "example.org/x",
                E::InvalidTrustDomainChar {
                    ch: '/',
                    offset: 11,
                },
            ),
            (
                "spiffe://example.org/x",
                E::UnexpectedPath { path: "/x".into() },
            ),
            (
                "SPIFFE://example.org",
                E::WrongScheme {
                    scheme: "SPIFFE".into(),
                },
            ),
            ("spiffe://", E::MissingTrustDomain),
            (
                " example.org",
                E::InvalidTrustDomainChar { ch: ' ', offset: 0 },
            ),
        ];
        for (s, want) in bad {
            assert_eq!(TrustDomain::parse(s), Err(want), "input {s:?}");
        }
        assert_eq!(
            TrustDomain::parse(&"a".repeat(256)),
            Err(E::TrustDomainTooLong { len: 256 })
        );
        TrustDomain::parse(&"a".repeat(255)).unwrap();
    }

    #[test]
    fn trust_domain_parse_name_takes_only_the_bare_name() {
        assert_eq!(
            TrustDomain::parse_name("example.org").unwrap(),
            TrustDomain::parse("example.org").unwrap()
        );
        for (s, name) in [
            ("spiffe://example.org", Some("example.org")),
            ("spiffe://example.org/", Some("example.org")),
            ("spiffe://example.org/ns/x?q#f", Some("example.org")),
            ("spiffe://Example.org", None),
            ("spiffe://", None),
            ("spiffe:example.org", None),
            ("https://example.org", None),
        ] {
            let e = TrustDomain::parse_name(s).unwrap_err();
            assert_eq!(
                e,
                E::NotAName {
                    given: s.into(),
                    name: name.map(Into::into)
                },
                "{s}"
            );
            let msg = e.to_string();
            assert!(msg.starts_with("trust domain is a name"), "{msg}");
            if let Some(n) = name {
                assert!(msg.contains(&format!("give {n},")), "{msg}");
            }
        }
        assert_eq!(
            TrustDomain::parse_name("Example.org"),
            Err(E::InvalidTrustDomainChar { ch: 'E', offset: 0 })
        );
    }

    #[test]
    fn membership_and_prefix() {
        let td = TrustDomain::parse("td").unwrap();
        let other = TrustDomain::parse("td2").unwrap();
        let a = id("spiffe://td/ns/a");
        assert!(a.is_member_of(&td));
        assert!(!a.is_member_of(&other));

        let cases: &[(&str, &str, bool)] = &[
            ("spiffe://td/ns/a", "spiffe://td", true),
            ("spiffe://td", "spiffe://td", true),
            ("spiffe://td/ns/a", "spiffe://td/ns", true),
            ("spiffe://td/ns/a", "spiffe://td/ns/a", true),
            ("spiffe://td/ns/a/b", "spiffe://td/ns", true),
            ("spiffe://td/nsx", "spiffe://td/ns", false),
            ("spiffe://td/nsx/a", "spiffe://td/ns", false),
            ("spiffe://td/ns", "spiffe://td/ns/a", false),
            ("spiffe://td", "spiffe://td/ns", false),
            ("spiffe://td/ns/a", "spiffe://td2/ns", false),
            ("spiffe://td/ns/a", "spiffe://td2", false),
            ("spiffe://td2/ns/a", "spiffe://td", false),
            ("spiffe://td/NS/a", "spiffe://td/ns", false),
        ];
        for &(s, p, want) in cases {
            let sid = id(s);
            assert_eq!(sid.has_prefix(&id(p)), want, "{s} under {p}");
            assert_eq!(sid.has_prefix_str(p), Ok(want), "{s} under {p}");
            let prefix = SpiffeIdPrefix::parse(p).unwrap();
            assert_eq!(prefix.matches(&sid), want, "{s} under {p}");
            assert_eq!(prefix.to_string(), p);
            assert_eq!(prefix.as_str(), p);
            assert_eq!(prefix.as_id().as_str(), p);
            assert_eq!(p.parse::<SpiffeIdPrefix>().unwrap(), prefix);
        }
        assert!(a.has_prefix_str("spiffe://td/ns/").is_err());
        let all = SpiffeIdPrefix::from(td.clone());
        assert!(all.matches(&a));
        assert!(!all.matches(&id("spiffe://td2/ns/a")));
        assert!(SpiffeIdPrefix::from(a.clone()).matches(&a));
    }

    use crate::testutil::XorShift;

    #[test]
    fn random_inputs_never_panic() {
        const PIECES: &[&str] = &[
            "spiffe://",
            "SPIFFE://",
            "spiffe:",
            "://",
            "/",
            "//",
            ".",
            "..",
            "?",
            "#",
            "%",
            "%2F",
            ":",
            "@",
            "a",
            "Z",
            "0",
            "-",
            "_",
            "td",
            "example.org",
            " ",
            "\n",
            "\0",
            "é",
            "€",
            "😀",
            "\u{200b}",
            "\u{7f}",
            "[",
            "]",
            "~",
            "\\",
        ];
        let seeds = ["spiffe://example.org/ns/prod/sa/web", "spiffe://td"];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut valid = 0usize;
        for round in 0..30_000 {
            let mut s = if round % 2 == 0 {
                seeds[rng.below(seeds.len())].to_owned()
            } else {
                String::new()
            };
            for _ in 0..rng.below(12) {
                let piece = PIECES[rng.below(PIECES.len())];
                // Insert at a random char boundary.
                let bounds: Vec<usize> = s
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain(std::iter::once(s.len()))
                    .collect();
                let at = bounds[rng.below(bounds.len())];
                s.insert_str(at, piece);
            }
            if rng.below(50) == 0 {
                s.push_str(&"a".repeat(rng.below(3000)));
            }

            let parsed = SpiffeId::parse(&s);
            match &parsed {
                Ok(sid) => {
                    valid += 1;
                    assert!(s.is_ascii());
                    assert!(s.len() <= MAX_ID_LEN);
                    assert_eq!(sid.as_str(), s);
                    let displayed = sid.to_string();
                    assert_eq!(SpiffeId::parse(&displayed).as_ref(), Ok(sid));
                    assert!(sid.has_prefix(&sid.trust_domain().id()));
                    assert!(sid.has_prefix(sid));
                    assert_eq!(
                        TrustDomain::parse(sid.trust_domain().name()).as_ref(),
                        Ok(sid.trust_domain())
                    );
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            assert_eq!(SpiffeIdPrefix::parse(&s).map(|p| p.as_id().clone()), parsed);
            if let Err(e) = TrustDomain::parse(&s) {
                let _ = e.to_string();
            }
        }
        assert!(
            valid > 100,
            "generator should produce some valid IDs ({valid})"
        );
    }

    #[test]
    fn records_keep_an_id_whole_and_bound_anything_longer() {
        let id = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN - 12));
        assert_eq!(for_record(id.clone()), id);
        let long = format!("spiffe://td/{}", "\u{e9}".repeat(MAX_ID_LEN));
        let r = for_record(long);
        assert!(
            r.len() <= MAX_ID_LEN + 3 && r.ends_with("..."),
            "{}",
            r.len()
        );
        assert!(r.starts_with("spiffe://td/\u{e9}"));
    }
}
