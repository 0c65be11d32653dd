//! `sigmux ca status`: the CA state summarized for an operator: the root,
//! each intermediate and JWT-SVID signing key with where it is in its life,
//! and when the rotation schedule (`serve`'s, or the operator's) is next
//! due. Times are Unix seconds in the JSON and RFC 3339 in the text.

use std::time::Duration;

use serde_json::{Value, json};

use super::authority::{CaState, CaStatus};
use super::rotation::{ACTIVATE_AT, PREPARE_AT, drained_at, life_point};
use super::svid::rfc3339;

fn status_name(s: CaStatus) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// The summary of `state` at `now` (Unix seconds), as `ca status --json`
/// prints it; `max_svid_ttl` is how long a drained intermediate or JWT key
/// stays in the bundle (`Config::max_svid_ttl`).
#[must_use]
pub fn summary(state: &CaState, now: i64, max_svid_ttl: Duration) -> Value {
    let active = state
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active);
    let prepared = state
        .intermediates
        .iter()
        .any(|i| i.status == CaStatus::Prepared);
    // The schedule's steps still to come, soonest first: retire what is
    // draining once its SVIDs have expired; activate the prepared successor,
    // or prepare one (nothing of the two without an active intermediate).
    let draining = state
        .intermediates
        .iter()
        .filter(|i| i.status == CaStatus::Draining)
        .map(|i| i.draining_since)
        .chain(
            state
                .jwt_keys
                .iter()
                .filter(|j| j.status == CaStatus::Draining)
                .map(|j| j.draining_since),
        )
        .map(|since| drained_at(since, now, max_svid_ttl))
        .min();
    let mut steps: Vec<Value> = draining
        .map(|at| json!({ "action": "retire", "at": at }))
        .into_iter()
        .chain(active.map(|a| {
            if prepared {
                json!({ "action": "activate", "at": life_point(a, ACTIVATE_AT) })
            } else {
                json!({ "action": "prepare", "at": life_point(a, PREPARE_AT) })
            }
        }))
        .collect();
    steps.sort_by_key(|s| s["at"].as_i64());
    let next = steps.first().cloned();
    let warnings = warnings(state, now);
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
            "revoked_at": i.revoked_at,
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
        "steps": steps,
        "warnings": warnings,
    })
}

/// What needs the operator now: an expired active intermediate (nothing
/// can be issued), a prepared one that expired or will before it is due
/// to be activated.
fn warnings(state: &CaState, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    let active = state
        .intermediates
        .iter()
        .rev()
        .find(|i| i.status == CaStatus::Active);
    if let Some(a) = active
        && a.not_after <= now
    {
        out.push(format!(
            "the active intermediate {} expired at {}: no SVID can be issued until a new one is prepared and activated",
            a.serial,
            rfc3339(a.not_after)
        ));
    }
    for p in state
        .intermediates
        .iter()
        .filter(|i| i.status == CaStatus::Prepared)
    {
        if p.not_after <= now {
            out.push(format!(
                "the prepared intermediate {} expired at {}: `ca rotate prepare` replaces it",
                p.serial,
                rfc3339(p.not_after)
            ));
        } else if let Some(a) = active
            && p.not_after <= life_point(a, ACTIVATE_AT)
        {
            out.push(format!(
                "the prepared intermediate {} expires at {}, before its scheduled activation at {}",
                p.serial,
                rfc3339(p.not_after),
                rfc3339(life_point(a, ACTIVATE_AT))
            ));
        }
    }
    out
}

fn time(v: &Value) -> String {
    v.as_i64().map_or_else(|| "-".into(), rfc3339)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// When an item got where it is: ` since <time>` for one draining,
/// ` (drained from <time>)` for one retired, ` at <time>` for a revoked
/// intermediate; nothing otherwise.
fn since(item: &Value) -> String {
    let at = |field: &str| item[field].as_i64().map(rfc3339);
    match (
        item["status"].as_str(),
        at("draining_since"),
        at("revoked_at"),
    ) {
        (Some("draining"), Some(t), _) => format!(" since {t}"),
        (Some("retired"), Some(t), _) => format!(" (drained from {t})"),
        (Some("revoked"), _, Some(t)) => format!(" at {t}"),
        _ => String::new(),
    }
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
    let now = s["now"].as_i64().unwrap_or(i64::MAX);
    let steps: Vec<String> = s["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|step| {
            let overdue = step["at"].as_i64().is_some_and(|at| at < now);
            format!(
                "{} at {}{}",
                text(&step["action"]),
                time(&step["at"]),
                if overdue { " (overdue)" } else { "" }
            )
        })
        .collect();
    if steps.is_empty() {
        out += "next: nothing (no active intermediate)\n";
    } else {
        out += &format!("next: {}\n", steps.join(", then "));
    }
    for w in s["warnings"].as_array().into_iter().flatten() {
        out += &format!("warning: {}\n", text(w));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{InitOptions, init};
    use crate::ca::rotation::{activate_at, prepare_at};
    use crate::ca::spiffe::TrustDomain;

    #[test]
    fn expired_and_short_lived_intermediates_are_warned_of_and_never_activated() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::key_store(dir.path());
        let engine = crate::testutil::cpu_engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let state = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let int = state.intermediates[0].clone();
        let ttl = Duration::from_secs(3600);
        assert_eq!(summary(&state, int.not_before, ttl)["warnings"], json!([]));

        // A one-day successor while the active one has most of a year left:
        // it would expire before its activation is due.
        let t0 = int.not_before + 100;
        prepare_at(
            dir.path(),
            &store,
            &engine,
            None,
            None,
            Duration::from_secs(86_400),
            t0,
        )
        .unwrap();
        let state = CaState::require(dir.path()).unwrap();
        let short = state.intermediates[1].clone();
        let s = summary(&state, t0 + 1, ttl);
        let w = s["warnings"][0].as_str().unwrap();
        assert!(
            w.contains(&short.serial) && w.contains("before its scheduled activation"),
            "{s}"
        );

        // Once it expired it is never activated; status says why and
        // `prepare` replaces it.
        let late = short.not_after + 1;
        let e = activate_at(dir.path(), late).unwrap_err().to_string();
        assert!(e.contains("expired at") && e.contains(&short.serial), "{e}");
        let state = CaState::require(dir.path()).unwrap();
        assert_eq!(state.intermediates[1].status, CaStatus::Prepared);
        assert_eq!(state.intermediates[0].status, CaStatus::Active);
        let t = render(&summary(&state, late, ttl));
        assert!(
            t.contains(&format!(
                "warning: the prepared intermediate {} expired",
                short.serial
            )),
            "{t}"
        );
        let life = Duration::from_secs((int.not_after - int.not_before) as u64);
        prepare_at(dir.path(), &store, &engine, None, None, life, late).unwrap();
        let state = CaState::require(dir.path()).unwrap();
        assert_eq!(state.intermediates[1].status, CaStatus::Retired);
        assert_eq!(state.intermediates[2].status, CaStatus::Prepared);

        // An active intermediate past its end: nothing can be issued, and
        // the overdue step is marked.
        let t = render(&summary(&state, int.not_after + 1, ttl));
        assert!(
            t.contains(&format!(
                "warning: the active intermediate {} expired",
                int.serial
            )),
            "{t}"
        );
        assert!(t.contains("(overdue)"), "{t}");
    }

    #[test]
    fn summary_names_every_item_and_the_next_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::key_store(dir.path());
        let engine = crate::testutil::cpu_engine();
        let td = TrustDomain::parse("example.org").unwrap();
        let state = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let int = &state.intermediates[0];
        let s = summary(&state, int.not_before, Duration::from_secs(3600));
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

        // After a rotation, retiring what drains comes first: the old
        // intermediate and JWT key wait for the longest SVID (2 h here).
        let t0 = half + 10;
        let life = Duration::from_secs((int.not_after - int.not_before) as u64);
        prepare_at(dir.path(), &store, &engine, None, None, life, t0).unwrap();
        activate_at(dir.path(), t0 + 5).unwrap();
        let state = CaState::require(dir.path()).unwrap();
        let s = summary(&state, t0 + 6, Duration::from_secs(7200));
        assert_eq!(s["next"]["action"], "retire", "{s}");
        assert_eq!(s["next"]["at"], t0 + 5 + 7200, "{s}");
        assert_eq!(s["steps"][1]["action"], "prepare", "{s}");
        let t = render(&s);
        assert!(
            t.contains(&format!(
                "next: retire at {}, then prepare at",
                rfc3339(t0 + 5 + 7200)
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!("draining since {}", rfc3339(t0 + 5))),
            "{t}"
        );
        // Each state says when it began.
        let mut later = state.clone();
        later.intermediates[0].status = CaStatus::Retired;
        later.intermediates[1].status = CaStatus::Revoked;
        later.intermediates[1].revoked_at = Some(t0 + 99);
        let t = render(&summary(&later, t0 + 100, Duration::from_secs(7200)));
        assert!(
            t.contains(&format!("retired (drained from {})", rfc3339(t0 + 5))),
            "{t}"
        );
        assert!(
            t.contains(&format!("revoked at {}", rfc3339(t0 + 99))),
            "{t}"
        );
    }
}
