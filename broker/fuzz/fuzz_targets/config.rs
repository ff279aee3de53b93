//! The config file: arbitrary text through what `ternd --config FILE` does with it,
//! `Settings::from_file_text` (the file's contents to settings) and then
//! `Config::from_settings(Settings::default().over(file))` (validation), with no flags
//! or environment on top.
//!
//! Invariants checked:
//! * neither step panics: the text gives a `Config` or a typed `ConfigError`;
//! * a parse error is `ConfigError::Parse`, on one line, at a line and column inside
//!   the text;
//! * a config that validates has every limit inside the range its check promises.
//!
//! The settings that name files (TLS certificates and keys, bridge password and CA
//! files) are pointed at a path that does not exist before validation, and an
//! `mqtts://` bridge without a CA file gets one there too: reading whatever file an
//! input names (`/dev/zero`, the system's root certificates on every run) is not what
//! is being tested, and the "cannot read" errors still are.
#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern_broker::{Config, ConfigError, Settings};

const NOWHERE: &str = "/nonexistent/tern-fuzz";

fn nowhere(p: &mut Option<PathBuf>) {
    if p.is_some() {
        *p = Some(PathBuf::from(NOWHERE));
    }
}

fn without_file_reads(mut s: Settings) -> Settings {
    nowhere(&mut s.tls.cert);
    nowhere(&mut s.tls.key);
    nowhere(&mut s.tls.client_ca);
    if let Some(bridge) = &mut s.bridge {
        for b in &mut bridge.mqtt {
            nowhere(&mut b.password_file);
            nowhere(&mut b.cert_file);
            nowhere(&mut b.key_file);
            nowhere(&mut b.ca_file);
            if b.url.as_deref().is_some_and(|u| u.starts_with("mqtts://")) {
                b.ca_file = Some(PathBuf::from(NOWHERE));
            }
        }
    }
    s
}

fn one_line(e: &ConfigError) {
    let shown = e.to_string();
    assert!(!shown.contains('\n'), "error on several lines: {shown:?}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = match Settings::from_file_text(Path::new("fuzz.toml"), &text) {
        Ok(s) => s,
        Err(e) => {
            let ConfigError::Parse { line, column, .. } = &e else {
                panic!("parsing gave a non-parse error: {e:?}");
            };
            let lines = text.split('\n').count();
            assert!((1..=lines).contains(line), "line {line} of {lines}: {e}");
            assert!(*column >= 1 && *column <= text.len() + 1, "{e}");
            one_line(&e);
            return;
        }
    };
    let config = match Config::from_settings(Settings::default().over(without_file_reads(file))) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let l = &config.limits;
    assert!((1024..=tern_codec::MAX_FRAME_SIZE_LIMIT).contains(&l.max_frame_size));
    assert!(l.max_connections >= 1 && l.max_subscriptions >= 1);
    assert!(l.subject.max_len >= 1 && l.subject.max_tokens >= 1);
    assert!(l.max_pending_bytes >= 1024);
    assert!(l.max_connections_per_ip >= 1);
    for d in [l.handshake_timeout, l.write_timeout, l.idle_timeout] {
        assert!(d > Duration::ZERO);
    }
    assert!((1..=128).contains(&l.filter.max_depth));
    assert!(l.filter.max_len >= 1 && l.filter.max_in_items >= 1);
    assert!(config.store.dedup_window >= 1 && config.store.dedup_age > Duration::ZERO);
    assert!(config.queues.max_deliver >= 1 && config.queues.max_prefetch >= 1);
    assert!(config.queues.ack_timeout > Duration::ZERO);
    assert!(config.tls.is_none(), "TLS files were pointed nowhere");
    let mut names: Vec<&str> = config.bridges.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "two bridges with one name");
    for b in &config.bridges {
        assert!(b.port > 0);
        assert!(!b.imports.is_empty() || !b.exports.is_empty());
        assert!(b.reconnect_delay_min <= b.reconnect_delay_max);
    }
});
