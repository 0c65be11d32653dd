//! `sigmux ca status`: the CA state summarized for an operator: the root,
//! each intermediate and JWT-SVID signing key with where it is in its life,
//! and when the rotation schedule (`serve`'s, or the operator's) is next
//! due. Times are Unix seconds in the JSON and RFC 3339 in the text.

use serde_json::{Value, json};

use super::authority::{CaState, CaStatus};
use super::rotation::{ACTIVATE_AT, PREPARE_AT, life_point};
use super::svid::rfc3339;

fn status_name(s: CaStatus) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// The summary of `state` at `now` (Unix seconds), as `ca status --json`
/// prints it.
#[must_use]
pub fn summary(state: &CaState, now: i64) -> Value {
    let active = state
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active);
    let prepared = state
        .intermediates
        .iter()
        .any(|i| i.status == CaStatus::Prepared);
    // What the schedule does next: activate the prepared successor, or
    // prepare one; nothing without an active intermediate.
    let next = active.map(|a| {
        if prepared {
            json!({ "action": "activate", "at": life_point(a, ACTIVATE_AT) })
        } else {
            json!({ "action": "prepare", "at": life_point(a, PREPARE_AT) })
        }
    });
    json!({
        "trust_domain": state.trust_domain,
        "now": now,
        "bundle_sequence": state.bundle_sequence,
        "refresh_hint_seconds": state.refresh_hint_secs,
        "root": {
            "serial": state.root.serial,
            "kind": state.root.kind,
            "key": state.root.key_name.as_deref().map_or_else(
                || format!(
                    "offline ({})",
                    state.root.offline_file.as_deref().map_or_else(String::new, |p| p.display().to_string())
                ),
                |n| format!("store ({n})"),
            ),
            "not_before": state.root.not_before,
            "not_after": state.root.not_after,
        },
        "intermediates": state.intermediates.iter().map(|i| json!({
            "serial": i.serial,
            "status": status_name(i.status),
            "kind": i.kind,
            "key_name": i.key_name,
            "home": i.home.to_string(),
            "not_before": i.not_before,
            "not_after": i.not_after,
            "draining_since": i.draining_since,
        })).collect::<Vec<_>>(),
        "jwt_keys": state.jwt_keys.iter().map(|j| json!({
            "kid": j.kid,
            "status": status_name(j.status),
            "scheme": j.scheme,
            "key_name": j.key_name,
            "draining_since": j.draining_since,
        })).collect::<Vec<_>>(),
        "revoked_svids": state.revoked.len(),
        "next": next,
    })
}

fn time(v: &Value) -> String {
    v.as_i64().map_or_else(|| "-".into(), rfc3339)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// ` since <time>` for an item that is draining, nothing otherwise.
fn since(item: &Value) -> String {
    item["draining_since"]
        .as_i64()
        .map_or_else(String::new, |t| format!(" since {}", rfc3339(t)))
}

/// The summary as `ca status` prints it: one line per item.
#[must_use]
pub fn render(s: &Value) -> String {
    let mut out = format!(
        "trust domain {}, bundle sequence {}, refresh hint {} s, {} revoked SVID(s)\n",
        text(&s["trust_domain"]),
        s["bundle_sequence"],
        s["refresh_hint_seconds"],
        s["revoked_svids"],
    );
    let r = &s["root"];
    out += &format!(
        "root         {} {} key {}, valid until {}\n",
        text(&r["serial"]),
        text(&r["kind"]),
        text(&r["key"]),
        time(&r["not_after"]),
    );
    for i in s["intermediates"].as_array().into_iter().flatten() {
        out += &format!(
            "intermediate {} {}{}, {} key {} ({}), valid until {}\n",
            text(&i["serial"]),
            text(&i["status"]),
            since(i),
            text(&i["kind"]),
            text(&i["key_name"]),
            text(&i["home"]),
            time(&i["not_after"]),
        );
    }
    for j in s["jwt_keys"].as_array().into_iter().flatten() {
        out += &format!(
            "JWT key      {} {}{}, {} key {}\n",
            text(&j["kid"]),
            text(&j["status"]),
            since(j),
            text(&j["scheme"]),
            text(&j["key_name"]),
        );
    }
    match s["next"]["action"].as_str() {
        Some(action) => {
            out += &format!("next: {action} at {}\n", time(&s["next"]["at"]));
        }
        None => out += "next: nothing (no active intermediate)\n",
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{InitOptions, init};
    use crate::ca::spiffe::TrustDomain;

    #[test]
    fn summary_names_every_item_and_the_next_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::key_store(dir.path());
        let engine = crate::testutil::cpu_engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let state = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let int = &state.intermediates[0];
        let s = summary(&state, int.not_before);
        assert_eq!(s["trust_domain"], "example.org");
        assert_eq!(s["intermediates"][0]["status"], "active");
        assert_eq!(s["intermediates"][0]["serial"], int.serial.as_str());
        assert_eq!(s["jwt_keys"][0]["kid"], state.jwt_keys[0].kid.as_str());
        assert_eq!(s["jwt_keys"][0]["status"], "active");
        assert_eq!(s["next"]["action"], "prepare");
        let half = int.not_before + (int.not_after - int.not_before) / 2;
        assert_eq!(s["next"]["at"], half);
        let t = render(&s);
        assert!(
            t.contains(&format!("intermediate {} active", int.serial)),
            "{t}"
        );
        assert!(
            t.contains(&format!("next: prepare at {}", rfc3339(half))),
            "{t}"
        );
        assert!(t.contains("root ") && t.contains("store (ca-root"), "{t}");
    }
}
