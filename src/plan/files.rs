//! A location that serves files from disk: where a path's file is, and nginx's defaults.

use std::path::PathBuf;

use super::Match;
use crate::config::{Loaded, Location, Problems};

#[derive(Debug)]
pub struct FilesPlan {
    /// `root`, or `alias` (then `strip` is the location prefix the alias replaces).
    pub base: PathBuf,
    /// `base` with its symlinks resolved, once at load (a request only compares against it);
    /// `None` when it did not resolve then (a root made later is resolved per request).
    pub real_base: Option<PathBuf>,
    pub strip: Option<String>,
    pub index: Vec<String>,
    pub default_type: String,
    /// nginx's `disable_symlinks off`; otherwise a link leading out of `base` is a 403.
    pub follow_symlinks: bool,
    pub log_not_found: bool,
}

/// nginx's built-in `default_type` is `text/plain`, but every packaged `nginx.conf` sets
/// `application/octet-stream`, which is what users see: that is ours.
pub const DEFAULT_TYPE: &str = "application/octet-stream";

/// `None` when the location serves no files (or, with a problem, when its keys are wrong).
pub fn compile_files(
    l: &Loaded,
    at: &str,
    loc: &Location,
    matcher: &Match,
    probs: &mut Problems,
) -> Option<FilesPlan> {
    let (base, strip) = match (&loc.root, &loc.alias) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            probs.push(l.problem_at(&format!("{at}.alias"), "\"alias\" and \"root\" together"));
            return None;
        }
        (Some(r), None) => (r, None),
        (None, Some(a)) => match matcher {
            Match::Prefix { path, .. } => (a, Some(path.clone())),
            Match::Exact(path) => (a, Some(path.clone())),
            Match::Regex { .. } => {
                probs.push(l.problem_at(
                    &format!("{at}.alias"),
                    "\"alias\" in a regex location needs captures, which graygate does not support; use \"root\"",
                ));
                return None;
            }
        },
    };
    if !base.starts_with('/') {
        probs.push(l.problem_at(
            &format!("{at}.{}", if strip.is_some() { "alias" } else { "root" }),
            format!("\"{base}\" must be an absolute path"),
        ));
        return None;
    }
    let follow_symlinks = match loc.disable_symlinks.as_deref() {
        None => false,
        Some("off") => true,
        Some(other) => {
            probs.push(l.problem_at(
                &format!("{at}.disable_symlinks"),
                format!("invalid disable_symlinks \"{other}\" (only \"off\"; absent: links out of the root are refused)"),
            ));
            false
        }
    };
    let index = loc
        .index
        .clone()
        .unwrap_or_else(|| vec!["index.html".into()]);
    if let Some(bad) = index.iter().find(|i| i.is_empty() || i.contains('/')) {
        probs.push(l.problem_at(&format!("{at}.index"), format!("invalid index \"{bad}\"")));
    }
    let base = PathBuf::from(match base.trim_end_matches('/') {
        "" => "/",
        b => b,
    });
    // Only the symlink check needs it; `disable_symlinks: off` never looks.
    let real_base = if follow_symlinks {
        None
    } else {
        std::fs::canonicalize(&base).ok()
    };
    Some(FilesPlan {
        base,
        real_base,
        strip,
        index,
        default_type: loc
            .default_type
            .clone()
            .unwrap_or_else(|| DEFAULT_TYPE.into()),
        follow_symlinks,
        log_not_found: loc.log_not_found.unwrap_or(true),
    })
}
