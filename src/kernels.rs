//! The CUDA kernel sources, embedded in the binary so they can be compiled
//! by NVRTC for whatever device the machine has (DESIGN.md, "GPU without a
//! GPU"). NVRTC is given one self-contained translation unit: `#include
//! "..."` lines are expanded here, each header once.

use std::collections::HashSet;

use aws_lc_rs::digest;

use crate::error::{Error, Result};

/// Every file under `kernels/` (but the host wrappers), by path relative to
/// that folder.
static FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// The kernel programs: each `.cu` file is one NVRTC translation unit.
pub fn programs() -> Vec<&'static str> {
    FILES
        .iter()
        .map(|(name, _)| *name)
        .filter(|n| n.ends_with(".cu"))
        .collect()
}

/// The raw text of one embedded file.
pub fn file(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The program `name` with its includes expanded, ready for NVRTC.
pub fn source(name: &str) -> Result<String> {
    let mut out = String::new();
    let mut seen = HashSet::new();
    expand(name, &mut out, &mut seen, 0)?;
    Ok(out)
}

/// SHA-256 of the expanded source, hex: part of the compiled-kernel cache
/// key, so an edited kernel is never served from a stale cache.
pub fn source_hash(name: &str) -> Result<String> {
    Ok(hex::encode(digest::digest(
        &digest::SHA256,
        source(name)?.as_bytes(),
    )))
}

/// `nonce/../hash/hmac.cuh` -> `hash/hmac.cuh`: embedded files are keyed
/// by their path under kernels/, so `..` and `.` must be resolved.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            s => parts.push(s),
        }
    }
    parts.join("/")
}

fn expand(name: &str, out: &mut String, seen: &mut HashSet<String>, depth: usize) -> Result<()> {
    if depth > 16 {
        return Err(Error::Invalid(format!(
            "kernel include depth exceeded at {name}"
        )));
    }
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let text = file(name)
        .ok_or_else(|| Error::Invalid(format!("kernel source {name} is not embedded")))?;
    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#pragma once") {
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include") {
            let rest = rest.trim();
            let inc = rest
                .strip_prefix('"')
                .and_then(|r| r.split_once('"'))
                .map(|(inc, _)| inc)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{name}: only #include \"...\" of kernel headers is allowed (NVRTC has no system headers): {line}"
                    ))
                })?;
            // Relative to the including file first, then to kernels/.
            let local = normalize(&if dir.is_empty() {
                inc.to_string()
            } else {
                format!("{dir}/{inc}")
            });
            let target = if file(&local).is_some() {
                local
            } else {
                inc.to_string()
            };
            out.push_str(&format!("// ---- {target}\n"));
            expand(&target, out, seen, depth + 1)?;
            out.push_str(&format!("// ---- end {target}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_header_is_embedded() {
        assert!(file("common.cuh").unwrap().contains("namespace smx"));
    }

    #[test]
    fn every_program_expands_without_includes_left() {
        for p in programs() {
            let s = source(p).unwrap();
            assert!(!s.contains("#include"), "{p} still includes something");
            assert!(!s.contains("#pragma once"));
        }
    }

    #[test]
    fn parent_relative_includes_resolve() {
        assert_eq!(normalize("nonce/../hash/hmac.cuh"), "hash/hmac.cuh");
        assert_eq!(normalize("rsa/../common.cuh"), "common.cuh");
        assert_eq!(normalize("./a//b.cuh"), "a/b.cuh");
    }

    #[test]
    fn missing_source_is_named() {
        let e = source("nope.cu").unwrap_err().to_string();
        assert!(e.contains("nope.cu"), "{e}");
    }
}
