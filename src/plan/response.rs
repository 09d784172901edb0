//! `add_header` and `return` compiled: header names checked, values as templates, nginx's
//! rules for which statuses get headers and which `return` forms redirect.

use indexmap::IndexMap;

use super::Template;
use crate::config::{AddHeader, Loaded, Problems, Return};

#[derive(Debug, Clone)]
pub struct AddHeaderPlan {
    pub name: http::HeaderName,
    pub value: Template,
    pub always: bool,
}

impl AddHeaderPlan {
    /// nginx adds a header without `always` only to these statuses.
    pub fn applies_to(&self, status: u16) -> bool {
        self.always
            || matches!(
                status,
                200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
            )
    }
}

/// What `return` answers.
#[derive(Debug)]
pub enum ReturnPlan {
    /// 301, 302, 303, 307, 308 with a `Location`; a rendered value starting with `/` is made
    /// absolute from the request (nginx's `absolute_redirect on`), so that `//evil.example`
    /// from a variable cannot become a protocol-relative redirect.
    Redirect { code: u16, url: Template },
    /// Any other status, with a body (may be empty).
    Body { code: u16, text: Template },
}

pub fn compile_add_headers(
    l: &Loaded,
    at: &str,
    map: &IndexMap<String, AddHeader>,
    probs: &mut Problems,
) -> Vec<AddHeaderPlan> {
    let mut out = Vec::new();
    for (name, v) in map {
        let hat = format!("{at}.{name}");
        let Ok(hname) = http::HeaderName::from_bytes(name.as_bytes()) else {
            probs.push(l.problem_at_key(&hat, format!("invalid header name \"{name}\"")));
            continue;
        };
        let (value, always) = v.parts();
        match Template::compile(value) {
            Ok(value) => out.push(AddHeaderPlan {
                name: hname,
                value,
                always,
            }),
            Err(e) => probs.push(l.problem_at(&hat, e)),
        }
    }
    out
}

fn is_redirect(code: u16) -> bool {
    matches!(code, 301 | 302 | 303 | 307 | 308)
}

pub fn compile_return(
    l: &Loaded,
    at: &str,
    r: &Return,
    probs: &mut Problems,
) -> Option<ReturnPlan> {
    let (code, text) = match r {
        Return::Code(c) => (*c, ""),
        Return::Text(t) => {
            let t = t.trim_start();
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                // nginx: `return URL` is a 302 to it.
                if !(t.starts_with("http://")
                    || t.starts_with("https://")
                    || t.starts_with("$scheme"))
                {
                    probs.push(l.problem_at(
                        at,
                        format!("invalid return \"{t}\" (expected \"CODE [TEXT]\", \"CODE URL\" or \"URL\")"),
                    ));
                    return None;
                }
                (302, t)
            } else {
                let code = t[..digits].parse().unwrap_or(-1);
                let rest = &t[digits..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    probs.push(l.problem_at(at, format!("invalid return code in \"{t}\"")));
                    return None;
                }
                (code, rest.strip_prefix(' ').unwrap_or(rest))
            }
        }
    };
    let Ok(code) = u16::try_from(code).map_err(|_| ()).and_then(|c| {
        if (200..=599).contains(&c) && c != 444 {
            Ok(c)
        } else {
            Err(())
        }
    }) else {
        probs.push(l.problem_at(
            at,
            format!("invalid return code {code} (200..599; nginx's 444 is not supported)"),
        ));
        return None;
    };
    let text = text.to_string();
    if is_redirect(code) && text.is_empty() {
        probs.push(l.problem_at(at, format!("return {code} needs a URL")));
        return None;
    }
    match Template::compile(&text) {
        Ok(t) if is_redirect(code) => Some(ReturnPlan::Redirect { code, url: t }),
        Ok(t) => Some(ReturnPlan::Body { code, text: t }),
        Err(e) => {
            probs.push(l.problem_at(at, e));
            None
        }
    }
}
