//! The run's disposable copy of the project, and what the agent changed in it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Where ocpipe's event plugin goes in the copy (left out of the diff: ocpipe put it there).
pub const PLUGIN_PATH: &str = ".opencode/plugins/ocpipe_capture.js";
/// What OpenCode installs for the plugins of a `.opencode/` folder: not the agent's work, so
/// not hashed (the folder is large) and, when it was not there before, listed apart.
const PLUGIN_SETUP_DIR: &str = ".opencode/node_modules";
const PLUGIN_SETUP_FILES: [&str; 4] =
    [".opencode/package.json", ".opencode/package-lock.json", ".opencode/bun.lock", ".opencode/.gitignore"];
pub const PLUGIN: &str = include_str!("plugin.js");
/// Text files up to this size get a unified diff.
const DIFF_MAX_BYTES: u64 = 256 * 1024;

/// Copies `project` into `dest`, leaving out `skip` (the captures folder, when it is inside the
/// project). Symbolic links are copied as links.
pub fn copy_project(project: &Path, dest: &Path, skip: &[PathBuf]) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(project)? {
        let entry = entry?;
        let from = entry.path();
        if skip.contains(&from) {
            continue;
        }
        let to = dest.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_project(&from, &to, skip)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ty.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

pub fn inject_plugin(workspace: &Path) -> io::Result<()> {
    let path = workspace.join(PLUGIN_PATH);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(path, PLUGIN)
}

/// Size and SHA-256 of every file under `root`, by relative path.
pub fn hash_tree(root: &Path) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ty) = e.file_type() else { continue };
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            if ty.is_dir() {
                if rel != PLUGIN_SETUP_DIR {
                    stack.push(p);
                }
            } else if ty.is_file() || ty.is_symlink() {
                if rel == PLUGIN_PATH {
                    continue;
                }
                // A link is its target's name (never followed); a file is hashed as it streams.
                let (size, hash) = if ty.is_symlink() {
                    let target = std::fs::read_link(&p).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                    (target.len() as u64, hex::encode(Sha256::digest(target.as_bytes())))
                } else {
                    hash_file(&p).unwrap_or((0, String::new()))
                };
                out.insert(rel, (size, hash));
            }
        }
    }
    out
}

fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut f, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// `fs_diff.json`: added, modified and deleted files (size and hash, before and after), with a
/// unified diff for text files under the size cap; `before` is the project itself.
pub fn diff(
    project: &Path,
    workspace: &Path,
    before: &BTreeMap<String, (u64, String)>,
    after: &BTreeMap<String, (u64, String)>,
    outside: Value,
) -> Value {
    let mut added = Vec::new();
    let mut modified = Vec::new();
    let mut deleted = Vec::new();
    let mut plugin_setup = vec![Value::String(format!("{PLUGIN_SETUP_DIR}/ (not hashed)"))];
    for (path, (size, hash)) in after {
        if !before.contains_key(path) && PLUGIN_SETUP_FILES.contains(&path.as_str()) {
            plugin_setup.push(Value::String(path.clone()));
            continue;
        }
        match before.get(path) {
            None => added.push(json!({
                "path": path, "size": size, "sha256": hash,
                "diff": text_diff(None, Some(&workspace.join(path)), path, *size),
            })),
            Some((old_size, old_hash)) if old_hash != hash => modified.push(json!({
                "path": path, "size_before": old_size, "size": size, "sha256_before": old_hash, "sha256": hash,
                "diff": text_diff(Some(&project.join(path)), Some(&workspace.join(path)), path, *size.max(old_size)),
            })),
            Some(_) => {}
        }
    }
    for (path, (size, hash)) in before {
        if !after.contains_key(path) {
            deleted.push(json!({
                "path": path, "size_before": size, "sha256_before": hash,
                "diff": text_diff(Some(&project.join(path)), None, path, *size),
            }));
        }
    }
    json!({
        "workspace": "/workspace",
        "files_before": before.len(),
        "files_after": after.len(),
        "added": added,
        "modified": modified,
        "deleted": deleted,
        "outside_workspace": outside,
        "plugin_setup": plugin_setup,
    })
}

/// A unified diff when both sides are text and small enough; else `null`.
fn text_diff(before: Option<&Path>, after: Option<&Path>, name: &str, size: u64) -> Value {
    if size > DIFF_MAX_BYTES {
        return Value::Null;
    }
    let read = |p: Option<&Path>| -> Option<String> {
        match p {
            None => Some(String::new()),
            // A link the agent made is not followed, a FIFO not opened (`read_regular`).
            Some(p) => crate::capture::read_regular(p, DIFF_MAX_BYTES)
                .ok()
                .filter(|b| b.len() as u64 <= DIFF_MAX_BYTES)
                .and_then(|b| String::from_utf8(b).ok()),
        }
    };
    let (Some(old), Some(new)) = (read(before), read(after)) else {
        return Value::Null;
    };
    let diff = similar::TextDiff::from_lines(&old, &new);
    Value::String(diff.unified_diff().context_radius(3).header(&format!("a/{name}"), &format!("b/{name}")).to_string())
}
