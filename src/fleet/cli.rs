//! `graygate push -c FILE [--force]` and `graygate pull -c FILE`.
//!
//! A push is guarded like a compare-and-swap: FILE's sidecar `FILE.fleet-revision` holds the
//! revision of `PREFIX/config` that FILE was last pushed as or pulled into (`pull -o FILE`,
//! which writes FILE too: a pull that only prints leaves the sidecar alone, else a pull to
//! look and a push would overwrite a colleague's push unseen), and the push is one
//! etcd transaction that writes only if the key is still at that revision (absent sidecar:
//! only if nothing was pushed yet). Otherwise someone else changed the fleet since: refused,
//! with the current revision and its writer, unless `--force`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{etcd, merge, Settings};
use crate::plan::Plan;

fn sidecar(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".fleet-revision");
    PathBuf::from(s)
}

/// The revision FILE was last pushed as or pulled at (0: never).
fn base_revision(file: &Path, s: &Settings) -> i64 {
    let text = std::fs::read_to_string(sidecar(file)).unwrap_or_default();
    let mut it = text.split_whitespace();
    match (it.next().and_then(|r| r.parse().ok()), it.next()) {
        (Some(r), Some(k)) if k == s.config_key() => r,
        _ => 0,
    }
}

fn remember(file: &Path, s: &Settings, revision: i64) {
    let p = sidecar(file);
    if let Err(e) = std::fs::write(&p, format!("{revision} {}\n", s.config_key())) {
        eprintln!(
            "graygate: cannot write {}: {e} (the next push will need --force)",
            p.display()
        );
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("graygate: {msg}");
    ExitCode::FAILURE
}

/// The file's text and store, checked exactly as `-t` checks it.
fn checked(file: Option<&Path>) -> Result<(PathBuf, String, Settings), ExitCode> {
    let Some(file) = file else {
        return Err(fail(
            "push and pull need -c FILE (a file with config_store)",
        ));
    };
    let l = crate::config::load(file).map_err(fail)?;
    Plan::compile(&l, None).map_err(|p| {
        eprintln!("{p}");
        fail(format!(
            "configuration file {} test failed: nothing pushed",
            file.display()
        ))
    })?;
    let s = match Settings::from_text(&l.text) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(fail(format!("{} has no config_store", file.display()))),
        Err(e) => return Err(fail(format!("{}: {e}", file.display()))),
    };
    Ok((file.to_path_buf(), l.text.to_string(), s))
}

/// `graygate push`.
pub fn push(file: Option<&Path>, force: bool) -> ExitCode {
    let (file, text, s) = match checked(file) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let shared = match merge::shared_part(&text) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let value = format!("{}{shared}", super::push_header());
    let base = base_revision(&file, &s);
    let key = s.config_key();
    let rt = match etcd::runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let r = rt.block_on(async {
        let mut c = etcd::connect(&s).await?;
        let mut txn = Txn::new();
        if !force {
            txn = txn.when([Compare::mod_revision(key.as_str(), CompareOp::Equal, base)]);
        }
        let txn = txn
            .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        tokio::time::timeout(etcd::TIMEOUT, c.txn(txn))
            .await
            .map_err(|_| format!("etcd at {} did not answer", s.endpoints()))?
            .map_err(|e| format!("etcd at {}: {e}", s.endpoints()))
    });
    let r = match r {
        Ok(r) => r,
        Err(e) => return fail(format!("push refused, nothing written: {e}")),
    };
    if r.succeeded() {
        let rev = r.header().map_or(0, |h| h.revision());
        remember(&file, &s, rev);
        println!(
            "graygate: pushed {} to {key}: revision {rev}",
            file.display()
        );
        return ExitCode::SUCCESS;
    }
    let (now, by) = r
        .op_responses()
        .into_iter()
        .find_map(|o| match o {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                (
                    kv.mod_revision(),
                    super::writer(&String::from_utf8_lossy(kv.value())),
                )
            }),
            _ => None,
        })
        .unwrap_or((0, "nobody (deleted)".into()));
    fail(format!(
        "push refused: {key} is at revision {now} ({by}), but {} was last pushed or pulled at revision {base}; \
         `graygate pull -c {}` shows the fleet's config, `graygate push --force` overwrites it",
        file.display(),
        file.display()
    ))
}

/// `graygate pull`: the fleet's config on stdout; with `-o OUT`, OUT is written (FILE's own
/// settings with the fleet's shared part) and OUT's next push is based on that revision.
pub fn pull(file: Option<&Path>, output: Option<&Path>) -> ExitCode {
    let Some(file) = file else {
        return fail("pull needs -c FILE (a file with config_store)");
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let s = match Settings::from_text(&text) {
        Ok(Some(s)) => s,
        Ok(None) => return fail(format!("{} has no config_store", file.display())),
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let rt = match etcd::runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let key = s.config_key();
    let v = rt.block_on(async {
        let mut c = etcd::connect(&s).await?;
        etcd::get(&mut c, &s, &key).await
    });
    let (t, mod_revision) = match v {
        Ok(etcd::Value {
            text: Some(t),
            mod_revision,
            ..
        }) => (t, mod_revision),
        Ok(_) => return fail(format!("nothing pushed to {key} yet")),
        Err(e) => return fail(e),
    };
    let Some(out) = output else {
        print!("{t}");
        eprintln!("graygate: {key} revision {mod_revision}");
        return ExitCode::SUCCESS;
    };
    let merged = match merge::merge(&text, &t) {
        Ok(m) => m,
        Err(e) => return fail(format!("{key} revision {mod_revision}: {e}")),
    };
    if let Err(e) = write_replacing(out, &merged) {
        return fail(format!("cannot write {}: {e}", out.display()));
    }
    remember(out, &s, mod_revision);
    eprintln!(
        "graygate: {key} revision {mod_revision} written to {} (its next push is based on it)",
        out.display()
    );
    ExitCode::SUCCESS
}

/// Writes `path` by a rename, so that it is never half written.
fn write_replacing(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".pull-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
