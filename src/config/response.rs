//! What a location answers with besides proxying: `add_header` and `return`, nginx's
//! directives of the same names.

use serde::Deserialize;

/// One `add_header` value: `"text"`, or `{ value: "text", always: true }` for nginx's
/// `add_header NAME VALUE always` (added to every status, not only 2xx/3xx).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AddHeader {
    Value(String),
    Full {
        value: String,
        #[serde(default)]
        always: bool,
    },
}

impl AddHeader {
    pub fn parts(&self) -> (&str, bool) {
        match self {
            AddHeader::Value(v) => (v, false),
            AddHeader::Full { value, always } => (value, *always),
        }
    }
}

/// `return: 404`, `return: "301 https://example.org$request_uri"`, `return: "200 ok\n"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Return {
    Code(i64),
    Text(String),
}
