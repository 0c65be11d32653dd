//! Feeds arbitrary text to the config loader and asks it for every typed
//! section, as `sigmux serve` does at start. Any panic is a bug: bad values
//! must come back as errors that name the field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmux::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text, "fuzz") {
        let _ = cfg.http_limits();
        let _ = cfg.keyless_settings();
        let _ = cfg.issuance_settings();
        let _ = cfg.rotation_settings();
        let _ = cfg.shutdown_grace();
        let _ = cfg.engine_config();
    }
});
